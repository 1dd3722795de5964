"""`transcribed jobs list | retry | forget | prune`: one job at a time, or the old ones at
once (safe while the daemon runs). The work is the job database's own: `state.overview`
and `jobs.retention`."""

import argparse
import sqlite3
import time

from transcribed.cli.shared import print_result, state_settings
from transcribed.cli.verb import JSON, STATE_DIR, Verb, argument
from transcribed.errors import ConfigError
from transcribed.settings import RetrySettings, StateSettings
from transcribed.state.overview import OperatorError
from transcribed.state.queue import JobState


def list_jobs(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    jobs = overview.open_queue(state_settings(args, StateSettings))
    rows = overview.job_rows(jobs, JobState(args.state) if args.state else None, args.limit)
    print_result(rows, args.json, overview.render_jobs(rows))
    return 0


LIST = Verb(
    "list",
    help="the newest jobs, optionally in one state",
    run=list_jobs,
    arguments=(
        argument("--state", choices=[str(state) for state in JobState]),
        argument("--limit", type=int, default=50, help="at most this many (default 50)"),
        STATE_DIR,
        JSON,
    ),
)


def retry_job(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    settings = state_settings(args, RetrySettings)
    if not settings.inbox.is_dir():
        raise ConfigError(
            f"inbox {settings.inbox} does not exist or is not a folder: the recording goes back "
            "there (check inbox in --config or TRANSCRIBED_INBOX)"
        )
    target = overview.retry(overview.open_queue(settings), settings.inbox, args.job)
    print(f"job {args.job}: the recording is back in the inbox as {target}")
    return 0


RETRY = Verb(
    "retry",
    help="put a failed job's recording back into the inbox",
    description="Move a failed recording from failed_dir back into the inbox under its "
    "original name; the daemon transcribes it as a new arrival. The copy in the inbox "
    "is durable before the failed copy is removed. Needs the inbox as well as the state "
    "folder (from --config or TRANSCRIBED_INBOX).",
    run=retry_job,
    arguments=(argument("job", type=int, metavar="ID"), STATE_DIR),
)


def forget_job(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    job = overview.forget(overview.open_queue(state_settings(args, StateSettings)), args.job)
    print(f"job {args.job} ({job.state}) forgotten; its files were not touched")
    return 0


FORGET = Verb(
    "forget",
    help="forget a done or failed job, so the same recording is transcribed again",
    description="Delete a done or failed job's record. Its files stay where they are; "
    "the same recording dropped again is then transcribed anew instead of being "
    "recognised as a duplicate.",
    run=forget_job,
    arguments=(argument("job", type=int, metavar="ID"), STATE_DIR),
)


def prune_jobs(args: argparse.Namespace) -> int:
    from transcribed.jobs.retention import prune
    from transcribed.state import overview

    settings = state_settings(args, StateSettings)
    overview.open_queue(settings).close()  # the same refusals as every jobs command
    try:
        pruned = prune(settings.database, time.time() - args.older_than, dry_run=args.dry_run)
    except sqlite3.Error as error:
        raise OperatorError(f"cannot prune {settings.database}: {error}") from None
    verb = "would forget" if args.dry_run else "forgot"
    print(f"{verb} {pruned['done']} done and {pruned['failed']} failed jobs; no file was touched")
    return 0


def _age(text: str) -> float:
    from transcribed.jobs.retention import parse_age

    try:
        return parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


PRUNE = Verb(
    "prune",
    help="forget done and failed jobs older than an age, e.g. --older-than 90d",
    description="Delete the records of done and failed jobs that finished more than "
    "--older-than ago, in one transaction (safe while the daemon runs). No file is "
    "touched: transcripts, archived and failed recordings stay where they are. What is "
    "lost: a pruned done job's recording is no longer recognised as a duplicate, so the "
    "same recording dropped again is transcribed again; a pruned failed job cannot be "
    "retried with `jobs retry` (copy its file from failed_dir into the inbox instead). "
    "Jobs still running, queued or waiting are never pruned.",
    run=prune_jobs,
    arguments=(
        argument(
            "--older-than",
            required=True,
            type=_age,
            metavar="AGE",
            help="finished at least this long ago: a number and a unit, min, h, d, w or mo "
            "(30 days), e.g. 90d, 12h, 30min, 6mo",
        ),
        argument("--dry-run", action="store_true", help="only count what would go"),
        STATE_DIR,
    ),
)

VERB = Verb(
    "jobs",
    help="list, retry, forget or prune jobs",
    description="Inspect and act on individual jobs (safe while the daemon runs).",
    actions=(LIST, RETRY, FORGET, PRUNE),
)
