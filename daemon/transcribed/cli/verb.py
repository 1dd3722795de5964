"""How a verb of the `transcribed` command is declared: its name, its help, its arguments,
and the function that runs it or the actions under it (`jobs list`, `config show`).

`cli.main` makes the argparse parsers from these declarations, in the order given; every
verb and action also takes the common options (--config, --log-level) after its name.
"""

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]

EXIT_FAILED = 1  # the verb ran and something it did failed (a check, a file, a search)
EXIT_CONFIG = 2  # usage and configuration errors, like argparse's own


@dataclass(frozen=True)
class Argument:
    """One `add_argument` call: its flags (or a positional's name) and its options."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]


def argument(*flags: str, **options: Any) -> Argument:
    return Argument(flags, options)


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    run: Handler | None = None  # None: one of the `actions` must be named
    description: str | None = None
    arguments: tuple[Argument, ...] = ()
    actions: tuple["Verb", ...] = ()
    # The log level unless --log-level is given: WARNING where the verb prints a result that
    # every job's events would bury (bench's table, web-password's line).
    log_level: str | None = None
    epilog: str | None = None
    formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter


# Arguments several verbs take.
JSON = argument("--json", action="store_true", help="machine-readable output")
STATE_DIR = argument(
    "--state-dir",
    type=Path,
    metavar="PATH",
    help="the daemon's state folder (default: state_dir from --config or TRANSCRIBED_STATE_DIR)",
)
