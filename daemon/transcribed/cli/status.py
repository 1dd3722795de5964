"""`transcribed status`: what the daemon is doing, read from the job database."""

import argparse
from pathlib import Path

from transcribed.cli.shared import print_result, state_settings
from transcribed.cli.verb import JSON, STATE_DIR, Verb
from transcribed.settings import StatusSettings


def status(args: argparse.Namespace) -> int:
    from transcribed.state import overview

    settings = state_settings(args, StatusSettings)
    inbox = settings.inbox
    look = (lambda: _look_into(inbox)) if inbox is not None and inbox.is_dir() else None
    report = overview.daemon_status(settings, overview.open_queue(settings), look)
    print_result(report, args.json, overview.render_status(report))
    return 0


def _look_into(inbox: Path) -> list[dict[str, object]]:
    """What waits in the inbox, seen read-only with the intake's own checks."""
    from transcribed.intake.survey import survey

    return [
        {"file": found.file, "reason": found.reason, "since": round(found.changed)}
        for found in survey(inbox)
    ]


VERB = Verb(
    "status",
    help="what the daemon is doing: queued, running (with progress), failed, last hour",
    description="Read the job database (safe while the daemon runs) and show queued jobs, "
    "running ones with progress and an ETA, recent failures with their reasons, and "
    "the throughput of the last hour. Needs only the state folder.",
    run=status,
    arguments=(STATE_DIR, JSON),
)
