"""Is the claimed recording still what was hashed? (docs/design.md I6)

A settle window ends a wait, not a writer: one that paused longer (a stalled share copy, a
recorder flushing in bursts) goes on writing into the file after it was claimed into the work
folder. Before a transcript is published and before an original is disposed of, the work file
is compared with the job's fingerprint; where it moved, it is hashed again. Changed bytes make
the job the new version (transcribed again); a writer that still holds it open makes it wait.
"""

import os

from transcribed.files.content import Content, Fingerprint, hash_descriptor, open_for_writing
from transcribed.state.queue import Job, JobQueue

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RecordingChanged(Exception):
    """The work file's bytes are no longer those that were hashed: `content` is what it holds
    now."""

    def __init__(self, content: Content) -> None:
        super().__init__("the recording changed after it was taken (its writer was not done)")
        self.content = content


class StillBeingWritten(Exception):
    """Another program on this machine still holds the recording open for writing."""

    def __init__(self) -> None:
        super().__init__("another program still holds the recording open for writing")


def check_unchanged(path: os.PathLike[str] | str, job: Job, jobs: JobQueue) -> None:
    """Return when the file at `path` holds what `job` hashed; raise RecordingChanged (with
    the new content) or StillBeingWritten. A file touched without a change of bytes (a `touch`,
    a chmod) gets its new fingerprint recorded. FileNotFoundError when it is gone."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if open_for_writing(fd):
            raise StillBeingWritten
        if Fingerprint.of(os.fstat(fd)) == job.fingerprint:
            return
        content = hash_descriptor(fd)
    finally:
        os.close(fd)
    if content.sha256 != job.sha256 or content.size != job.size:
        raise RecordingChanged(content)
    jobs.record_fingerprint(job.id, content)
