"""Is the claimed recording still what was hashed? (docs/design.md I6)

A settle window ends a wait, not a writer: one that paused longer (a stalled share copy, a
recorder flushing in bursts) goes on writing into the file after it was claimed into the work
folder. Before a transcript is published and before an original is disposed of, the work file
is compared with the job's fingerprint; where it moved, it is hashed again. Changed bytes make
the job the new version (transcribed again); a writer that still holds it open makes it wait.
"""

import os
import time

from transcribed.backoff import LONGEST_WAIT_SECONDS
from transcribed.files.content import Content, Fingerprint, hash_descriptor, open_for_writing
from transcribed.files.filesystems import sees_every_writer
from transcribed.state.boot_clock import seconds_since
from transcribed.state.queue import Job, JobQueue

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RecordingChanged(Exception):
    """The work file's bytes are no longer those that were hashed: `content` is what it holds
    now."""

    def __init__(self, content: Content) -> None:
        super().__init__("the recording changed after it was taken (its writer was not done)")
        self.content = content


_OPEN = "another program still holds the recording open for writing"


class StillBeingWritten(Exception):
    """Another program on this machine still holds the recording open for writing (or, where
    writers cannot be seen, it was claimed too recently to be sure no writer is left)."""

    def __init__(
        self, reason: str = "another program still holds the recording open for writing"
    ) -> None:
        super().__init__(reason)


_HELD = (
    "claimed less than settle_seconds_unseen ago from a place whose writers cannot be seen: "
    "kept until then, in case its writer had only paused"
)


def _claimed_within(job: Job, seconds: float) -> bool:
    """Whether `job` was claimed less than `seconds` ago, by either clock. The boot clock
    (in the boot that claimed it) is not moved by a step of the wall clock: NTP setting the
    time forward at boot does not end the wait early. On the wall clock, a claim further in
    the future than any wait (the clock was far ahead then, and was corrected) is not waited
    out: the clock may take days to catch up."""
    booted = seconds_since(job.claimed_boot, job.claimed_uptime)
    if booted is not None and booted < seconds:
        return True
    since = time.time() - job.created
    return -LONGEST_WAIT_SECONDS <= since < seconds


def check_unchanged(
    path: os.PathLike[str] | str, job: Job, jobs: JobQueue, *, hold_unseen: float = 0.0
) -> None:
    """Return when the file at `path` holds what `job` hashed; raise RecordingChanged (with
    the new content) or StillBeingWritten. A file touched without a change of bytes (a `touch`,
    a chmod) gets its new fingerprint recorded. FileNotFoundError when it is gone.

    `hold_unseen` (before a disposal): where writers cannot be seen (a network or FUSE mount,
    another user's file without CAP_LEASE), the file must also have been claimed that many
    seconds ago: a writer that paused past the claim has that long again to show itself."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        writers = open_for_writing(fd)
        info = os.fstat(fd)
        if writers:
            raise StillBeingWritten
        unseen = writers is None or not sees_every_writer(info.st_dev)
        if unseen and _claimed_within(job, hold_unseen):
            raise StillBeingWritten(_HELD)
        if Fingerprint.of(info) == job.fingerprint:
            return
        content = hash_descriptor(fd)
    finally:
        os.close(fd)
    if content.sha256 != job.sha256 or content.size != job.size:
        raise RecordingChanged(content)
    jobs.record_fingerprint(job.id, content)
