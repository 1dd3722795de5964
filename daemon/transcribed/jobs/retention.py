"""`transcribed jobs prune`: forget the records of jobs that finished long ago.

Only done and failed jobs are pruned, and never files: transcripts, archived originals and
failed recordings stay where they are. One SQLite transaction, so it is safe while the daemon
runs (the daemon's writes wait for it, as they wait for each other).

What is lost with a record: a done job's content is no longer recognised, so the same
recording dropped again is transcribed again; a failed job can no longer be retried with
`jobs retry` (its file is still in failed_dir, to copy back by hand).
"""

import re
import sqlite3
from contextlib import closing
from pathlib import Path

_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")

# Finished jobs old enough, except one that an unfinished duplicate still waits on: its
# disposal follows the original's transcript.
_PRUNABLE = (
    "state IN ('done', 'failed') AND COALESCE(finished, updated) < :before"
    " AND id NOT IN (SELECT duplicate_of FROM jobs WHERE duplicate_of IS NOT NULL"
    "                AND state NOT IN ('done', 'failed'))"
)


def parse_age(text: str) -> float:
    """Seconds in an age like `90d`, `12h`, `30m` or `2w`; ValueError otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an age like 90d, 12h, 30m or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


def prune(database: Path, before: float, *, dry_run: bool = False) -> dict[str, int]:
    """Delete done and failed jobs that finished before `before` (wall clock); return how many
    of each state were (or, with `dry_run`, would be) deleted."""
    with closing(sqlite3.connect(database, timeout=30, isolation_level=None)) as db:
        db.execute("PRAGMA synchronous=FULL")  # as the daemon's own connections
        db.execute("PRAGMA foreign_keys=ON")  # a dangling duplicate_of fails, not corrupts
        db.execute("BEGIN IMMEDIATE")
        try:
            # Only the constant _PRUNABLE is interpolated; values are bound.
            counts = dict(
                db.execute(
                    f"SELECT state, COUNT(*) FROM jobs WHERE {_PRUNABLE} GROUP BY state",  # noqa: S608
                    {"before": before},
                ).fetchall()
            )
            if not dry_run:
                # Finished duplicates of a pruned job keep their own record, without the link.
                unlink = f"UPDATE jobs SET duplicate_of = NULL WHERE duplicate_of IN (SELECT id FROM jobs WHERE {_PRUNABLE})"  # noqa: E501, S608
                db.execute(unlink, {"before": before})
                db.execute(f"DELETE FROM jobs WHERE {_PRUNABLE}", {"before": before})  # noqa: S608
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return {state: int(counts.get(state, 0)) for state in ("done", "failed")}
