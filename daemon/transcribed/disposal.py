"""What happens to an original once its transcript is durable, or once it failed for good.

Every step is safe to repeat after a crash: moving re-uses the target recorded in the queue,
and a work file that is already gone means the step finished before the crash.
"""

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from transcribed import faults
from transcribed.assurance import Assurance, assess
from transcribed.durable import (
    fsync_dir,
    link_or_copy_no_overwrite,
    make_folders,
    publish_bytes,
    unique_name,
)
from transcribed.queue import Job, JobQueue

_BLOCK = 1 << 20
REASON_SUFFIX = ".error.json"  # the reason file beside a quarantined original


class Disposer:
    """Carries out the disposal policy for originals sitting in the work folder."""

    def __init__(
        self,
        jobs: JobQueue,
        work_dir: Path,
        policy: str,
        archive_dir: Path | None,
        failed_dir: Path,
        mode: int = 0o640,
    ) -> None:
        self._jobs = jobs
        self._work = work_dir
        self._policy = policy
        self._archive = archive_dir
        self._failed = failed_dir
        self._mode = mode
        # Originals are disposed of from the work folder: its storage decides what shredding
        # can promise. Recorded in every transcript's JSON.
        self.assurance: Assurance = assess(policy, work_dir)

    def dispose(self, job: Job) -> str:
        """Apply the policy to a job whose transcript is durable; returns what was done."""
        source = self._work / job.work_name
        if not os.path.lexists(source):
            return "already-disposed"
        if self._policy == "move":
            assert self._archive is not None
            self._move(job, source, self._archive)
            return "moved"
        if self._policy == "shred":
            shred(source)
            return "shredded"
        source.unlink()
        faults.point("disposal.unlinked")
        fsync_dir(self._work)
        return "deleted"

    def quarantine(self, job: Job, error: str) -> Path:
        """Move a permanently failed original to failed_dir beside `<name>.error.json`.
        Never shredded: the user may want to look at it or fix the decoder."""
        source = self._work / job.work_name
        target = Path(job.disposed_to) if job.disposed_to else None
        if os.path.lexists(source):
            target = self._move(job, source, self._failed, reserve=len(REASON_SUFFIX))
        assert target is not None
        report = {"error": error, "attempts": job.attempts, "time": _now()}
        reason = target.with_name(target.name + REASON_SUFFIX)
        publish_bytes(
            reason,
            json.dumps(report, indent=2).encode() + b"\n",
            mode=self._mode,
            label="reason",
        )
        fsync_dir(reason.parent)
        return target

    def _move(self, job: Job, source: Path, root: Path, reserve: int = 0) -> Path:
        relpath = PurePosixPath(os.fsdecode(job.relpath))
        target = Path(job.disposed_to) if job.disposed_to else None
        if target is None or not _holds(target, source):
            folder = make_folders(root, Path(relpath.parent))
            target = unique_name(folder, relpath.name, reserve)
            self._jobs.record_disposal_target(job.id, str(target))
            faults.point("disposal.linking")
            link_or_copy_no_overwrite(source, target)
            faults.point("disposal.linked")
        fsync_dir(target.parent)
        faults.point("disposal.target_fsynced")
        source.unlink()
        faults.point("disposal.unlinked")
        fsync_dir(self._work)
        faults.point("disposal.work_fsynced")
        return target


def _holds(target: Path, source: Path) -> bool:
    """True when an earlier, interrupted move already put `source`'s content at `target`."""
    try:
        return os.path.samefile(target, source) or _same_bytes(target, source)
    except OSError:
        return False


def _same_bytes(first: Path, second: Path) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as a, second.open("rb") as b:
        while True:
            block_a, block_b = a.read(_BLOCK), b.read(_BLOCK)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def shred(path: Path) -> None:
    """Overwrite a single-link regular file through a validated descriptor, fsync, unlink.

    Never the `shred` command: it follows symlinks and `-f` chmods the target. What this
    cannot promise (SSDs, copy-on-write filesystems, snapshots) is in the README.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError(f"refusing to shred {path}: not a single-link regular file")
        remaining = info.st_size
        while remaining:
            written = os.write(fd, os.urandom(min(remaining, _BLOCK)))
            remaining -= written
        os.fsync(fd)
        faults.point("shred.overwritten")
        if not os.path.samestat(os.stat(path, follow_symlinks=False), info):
            raise OSError(f"refusing to unlink {path}: it was replaced while being shredded")
        path.unlink()
        faults.point("disposal.unlinked")
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
