"""The loop over the verbs: the parser made from their declarations, the common options,
and the errors a user can cause mapped to one line and an exit code."""

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from transcribed import __version__
from transcribed.cli import (
    bench,
    config,
    doctor,
    jobs,
    recover,
    run,
    search,
    status,
    transcribe,
    web,
    web_password,
)
from transcribed.cli.verb import EXIT_CONFIG, EXIT_FAILED, Verb
from transcribed.errors import ConfigError, ModelError
from transcribed.files.content import ignore_lease_breaks
from transcribed.logs import configure_logging
from transcribed.settings import DEFAULT_CONFIG_PATH
from transcribed.settings.access import StateAccessDenied
from transcribed.state.overview import OperatorError

# In the order `transcribed --help` lists them.
VERBS: tuple[Verb, ...] = (
    run.VERB,
    transcribe.VERB,
    status.VERB,
    jobs.VERB,
    doctor.VERB,
    recover.VERB,
    config.VERB,
    bench.VERB,
    search.VERB,
    web.VERB,
    web_password.VERB,
)
EXIT_BROKEN_PIPE = 128 + 13  # as a program killed by SIGPIPE: what shells expect of `… | head`


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ignore_lease_breaks()  # any command may ask whether a writer still holds a recording
    try:
        args = build_parser().parse_args(argv)  # --help prints, too
        configure_logging(args.log_level or args.quiet_log_level)
        code = int(args.handler(args))
        sys.stdout.flush()  # a reader that went away (`status | head`) is noticed here
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except StateAccessDenied as denied:  # the one mistake whose fix is this very command
        print(f"transcribed: {denied.with_command(argv)}", file=sys.stderr)
        return EXIT_CONFIG
    except (ConfigError, ModelError) as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OperatorError as error:
        print(f"transcribed: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


# Where the long answers are: the pages of the checkout (/opt/transcribed/ under the system
# unit), named as the units' Documentation= lines name them.
DOCUMENTATION = """\
Documentation, in the checkout (/opt/transcribed/ under the system unit):
  README.md                  what it is, trying it in two minutes, installing
  docs/service.md            running it under systemd; upgrade, uninstall, watching it
  docs/configuration.md      every setting: default, environment variable, reload
  docs/failures.md           what happens when something fails
  docs/commands.md           every command
  docs/page.md               the web page, on the LAN and on phones
  docs/transcript-format.md  every field of the transcript files"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed",
        description="Private, local transcription: recordings dropped into an inbox folder become "
        "transcripts in an outbox folder, on a Qwen3-ASR model on this machine. "
        "Nothing is sent anywhere.",
        epilog=DOCUMENTATION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # --config and --log-level go before the command or after it: `transcribed --config x
    # status` and `transcribed status --config x` mean the same.
    _common_options(parser, default=None)
    parser.set_defaults(quiet_log_level="INFO")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for verb in VERBS:
        _add(commands, verb)
    return parser


def _add(commands: "argparse._SubParsersAction[argparse.ArgumentParser]", verb: Verb) -> None:
    """`verb`'s parser, with the common options (after its name), its arguments and, under
    it, its actions."""
    command = commands.add_parser(
        verb.name,
        help=verb.help,
        description=verb.description,
        epilog=verb.epilog,
        formatter_class=verb.formatter_class,
    )
    # SUPPRESS: an option not given here keeps what was given before the command name.
    _common_options(command, default=argparse.SUPPRESS)
    for argument in verb.arguments:
        command.add_argument(*argument.flags, **argument.options)
    if verb.run is not None:
        command.set_defaults(handler=verb.run)
    if verb.log_level is not None:
        command.set_defaults(quiet_log_level=verb.log_level)
    if verb.actions:
        # Without a verb of its own to run, one of its actions must be named.
        actions = command.add_subparsers(required=verb.run is None, metavar="ACTION")
        for action in verb.actions:
            _add(actions, action)


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=default,
        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} when it exists); "
        "TRANSCRIBED_<NAME> environment variables override it",
    )
    parser.add_argument(
        "--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
