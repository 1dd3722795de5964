"""`transcribed web-password`: the line that gives the page a password."""

import argparse

from transcribed.cli.verb import Verb


def web_password(args: argparse.Namespace) -> int:
    from transcribed.web.auth import hash_password, read_new_password

    print(f'password_hash = "{hash_password(read_new_password())}"')
    return 0


VERB = Verb(
    "web-password",
    help="hash a password for the page's [web] password_hash",
    description="Read a password (twice, from the terminal; once from a pipe) and print "
    "the line to put under [web] in the config file.",
    run=web_password,
    log_level="WARNING",
)
