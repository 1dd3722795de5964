"""What waits in the inbox, and why, seen from outside the daemon (`transcribed status` while
no daemon runs, when the waiting files it recorded may be stale or were never recorded).

Read-only: the same walk, name filters, claim checks and completeness checks as the intake,
through descriptors opened the same careful way, and nothing is claimed, moved or recorded.
"""

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed.files.content import open_for_writing
from transcribed.files.folders import stat_below
from transcribed.files.names import display_name, not_a_recording
from transcribed.intake.claim import (
    NotYet,
    Refused,
    _check_claimable,
    _open_file,
    open_folder_below,
)
from transcribed.intake.completeness import incomplete_reason
from transcribed.intake.watcher import walk_files

TAKEN_AT_START = "ready: taken when the daemon starts"


@dataclass(frozen=True)
class InboxFile:
    """A file in the inbox: what the intake would make of it, and when it last changed."""

    file: str  # printable (display_name)
    reason: str
    changed: float  # mtime, wall clock


def survey(inbox: Path, limit: int = 1000) -> list[InboxFile]:
    """Every file in the inbox (at most `limit`) with what the daemon would do with it:
    take it, wait for it to finish, or leave it (not a recording, a symlink, …)."""
    found = []
    for relpath in walk_files(inbox):
        found.append(_look(inbox, relpath))
        if len(found) >= limit:
            break
    return found


def _look(inbox: Path, relpath: str) -> InboxFile:
    try:
        changed = stat_below(inbox, relpath).st_mtime
    except OSError:
        changed = 0.0
    if (stray := not_a_recording(relpath)) is not None:
        return InboxFile(display_name(relpath), f"left alone: {stray}", changed)
    try:
        reason = _verdict(inbox, relpath)
    except NotYet as passing:
        reason = f"waits: {passing}"
    except Refused as refusal:
        reason = f"left alone: {refusal}"
    except OSError as error:
        reason = f"cannot be looked at: {error.strerror or error}"
    return InboxFile(display_name(relpath), reason, changed)


def _verdict(inbox: Path, relpath: str) -> str:
    """What a claim would say (raises Refused as a claim would), without claiming."""
    parts = PurePosixPath(relpath).parts
    folder = open_folder_below(inbox, parts[:-1])
    try:
        fd = _open_file(parts[-1], folder)
        try:
            info = os.fstat(fd)
            _check_claimable(info, os.stat(inbox).st_dev)
            if open_for_writing(fd):
                return "still being written: another program holds it open"
            unfinished = incomplete_reason(fd, info.st_size, info.st_mtime_ns)
        finally:
            os.close(fd)
    finally:
        os.close(folder)
    return f"looks unfinished: {unfinished}" if unfinished else TAKEN_AT_START
