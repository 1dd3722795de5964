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

_DAY = 86400.0
# Units a person reads one way only. A bare "m" is not among them: six months or six
# minutes? Pruning with the wrong one forgets the whole duplicate memory.
_UNITS = {
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": _DAY,
    "day": _DAY,
    "days": _DAY,
    "w": 7 * _DAY,
    "week": 7 * _DAY,
    "weeks": 7 * _DAY,
    "mo": 30 * _DAY,
    "month": 30 * _DAY,
    "months": 30 * _DAY,
}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")
_EXAMPLES = "like 90d, 12h, 30min, 2w or 6mo"

# Finished jobs old enough, except one that an unfinished duplicate still waits on: its
# disposal follows the original's transcript.
_PRUNABLE = (
    "state IN ('done', 'failed') AND COALESCE(finished, updated) < :before"
    " AND id NOT IN (SELECT duplicate_of FROM jobs WHERE duplicate_of IS NOT NULL"
    "                AND state NOT IN ('done', 'failed'))"
)


def parse_age(text: str) -> float:
    """Seconds in an age like `90d`, `12h`, `30min`, `2w` or `6mo` (a month is 30 days);
    ValueError, saying why, otherwise."""
    match = _AGE.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not an age {_EXAMPLES}")
    number, unit = match.groups()
    if unit == "m":
        s = "" if float(number) == 1 else "s"
        raise ValueError(
            f"{text!r} is ambiguous: write {number}min for {number} minute{s} or {number}mo "
            f"for {number} month{s}"
        )
    if unit not in _UNITS:
        raise ValueError(f"{text!r} is not an age: {unit!r} is no unit; write one {_EXAMPLES}")
    return float(number) * _UNITS[unit]


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
