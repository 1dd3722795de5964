"""`transcribed web`: the page, in its own process (the daemon stays cut off from the
network); the page itself is the `web` room."""

import argparse

from transcribed.cli.verb import Verb, argument
from transcribed.settings import Settings, load_settings
from transcribed.settings.access import check_state_access


def web(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k)) is not None}
    page = settings.web.model_copy(update=overrides)
    from transcribed.web.app import serve

    return serve(settings.model_copy(update={"web": page}))


VERB = Verb(
    "web",
    help="serve the page: status, transcripts, search and upload (127.0.0.1 by default)",
    description="A web page for the people who drop the files, in its own process (the "
    "daemon stays cut off from the network). It reads the job database and the "
    "outbox, and writes only uploads into the inbox and retries. Listening beyond "
    "127.0.0.1 needs a login: [web] password_hash (see `transcribed web-password`) "
    "or token_file in the config.",
    run=web,
    arguments=(
        argument("--host", help="address to listen on (default: [web] host, 127.0.0.1)"),
        argument("--port", type=int, help="TCP port (default: [web] port, 8750)"),
    ),
)
