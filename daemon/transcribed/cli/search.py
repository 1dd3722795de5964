"""`transcribed search QUERY`: the page's full-text search, from the shell (the index is
`output.search_index`)."""

import argparse
import dataclasses
import sqlite3
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from transcribed.cli.shared import print_result
from transcribed.cli.verb import EXIT_FAILED, JSON, Verb, argument
from transcribed.errors import ConfigError
from transcribed.settings import Settings, load_settings
from transcribed.settings.access import check_state_access
from transcribed.state.overview import OperatorError

if TYPE_CHECKING:
    from transcribed.output.search_index import SearchIndex

ResultT = TypeVar("ResultT")


def search(args: argparse.Namespace) -> int:
    from transcribed.output import search_index

    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    index = search_index.SearchIndex(settings.search_database)
    if args.rebuild:
        ids = search_index.published_job_ids(settings.database)
        count = _index_write(index, lambda: index.rebuild(settings.outbox, ids))
        print(f"indexed {count} transcripts from {settings.outbox}", file=sys.stderr)
        if not args.query:
            return 0
    if not args.query:
        raise ConfigError("say what to look for: transcribed search QUERY (or --rebuild)")
    if not settings.search_database.exists():
        raise ConfigError(
            f"no search index at {settings.search_database}: run `transcribed search "
            "--rebuild` as the service's user (pass the daemon's config with --config)"
        )
    try:
        hits = index.search(args.query, args.limit)
    except search_index.IndexDamaged:
        _repair_index(index, settings)
        hits = index.search(args.query, args.limit)
    rows = [dataclasses.asdict(hit) for hit in hits]
    text = "\n".join(search_index.render_hit(hit) for hit in hits) or "no transcript holds that"
    print_result(rows, args.json, text)
    return 0 if hits else EXIT_FAILED


def _repair_index(index: "SearchIndex", settings: Settings) -> None:
    """A damaged index met by a search: set aside and rebuilt from the outbox, then searched."""
    print(
        f"the search index {index.path} is damaged: setting it aside and rebuilding it from "
        f"{settings.outbox}…",
        file=sys.stderr,
    )
    count = _index_write(index, lambda: index.repair(settings.outbox, settings.database))
    if count is None:
        raise OperatorError(
            "the search index is being rebuilt by another process (the daemon or the page); "
            "try again in a minute"
        )
    print(f"indexed {count} transcripts", file=sys.stderr)


def _index_write(index: "SearchIndex", write: Callable[[], ResultT]) -> ResultT:
    """`write` changes the index: one clear line when this user may not."""
    try:
        return write()
    except (OSError, sqlite3.Error) as error:
        raise OperatorError(
            f"cannot write the search index {index.path}: {error}; run this as the service's "
            "user (sudo -u transcribed …, with the daemon's --config)"
        ) from None


VERB = Verb(
    "search",
    help="find words in every transcript (the page's search, from the shell)",
    description="Full-text search over published transcripts: segments holding any "
    "term of QUERY, in transcripts that hold every term, with their times. Any script "
    "works, Chinese and Japanese included. The index lives beside the job database; "
    "--rebuild makes it anew from the JSON files in the outbox.",
    run=search,
    arguments=(
        argument("query", nargs="?", metavar="QUERY", help="words to look for"),
        argument("--limit", type=int, default=50, help="at most this many hits (50)"),
        argument(
            "--rebuild",
            action="store_true",
            help="index every transcript in the outbox anew (run as the service's user)",
        ),
        JSON,
    ),
)
