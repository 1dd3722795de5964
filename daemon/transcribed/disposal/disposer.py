"""What happens to an original once its transcript is durable, or once it failed for good.

Every step is safe to repeat after a crash: moving re-uses the target recorded in the queue.
Nothing is taken on trust: a move counts only once the archive copy is the same file (a hard
link) or has the recording's size and SHA-256; a work file that is already gone counts as
disposed of only when that is verified (the archive copy, or a delete/shred we had begun in
the work folder we opened). Otherwise the recording vanished, and the job says so.
"""

import errno
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from transcribed import faults
from transcribed.disposal.assurance import Assurance, assess
from transcribed.errors import FolderUnusable, RecordingVanished
from transcribed.files.content import hash_file
from transcribed.files.durable import (
    NAME_MAX,
    check_outside,
    fsync_dir,
    link_or_copy_no_overwrite,
    make_folders,
    publish_bytes,
    unique_name,
)
from transcribed.files.names import REASON_SUFFIX
from transcribed.state.queue import Job, JobQueue, JobState
from transcribed.state.recheck import check_unchanged
from transcribed.state.workfolder import WorkFolder

_BLOCK = 1 << 20


class Disposer:
    """Carries out the disposal policy for originals sitting in the work folder."""

    def __init__(
        self,
        jobs: JobQueue,
        work: WorkFolder,
        policy: str,
        archive_dir: Path | None,
        failed_dir: Path,
        mode: int = 0o640,
        hold_unseen: float = 0.0,
    ) -> None:
        self._jobs = jobs
        self._work = work
        self._policy = policy
        self._archive = archive_dir
        self._failed = failed_dir
        self._mode = mode
        # Where writers cannot be seen, an original stays this long after its claim.
        self._hold_unseen = hold_unseen
        # Originals are disposed of from the work folder: its storage decides what shredding
        # can promise. Recorded in every transcript's JSON.
        self.assurance: Assurance = assess(policy, work.path)

    def dispose(self, job: Job) -> str:
        """Apply the policy to a job whose transcript is durable; returns what was done.
        FolderUnusable (an OSError) while the work folder is not the one we opened;
        RecordingVanished when the original is gone and we did not dispose of it;
        RecordingChanged or StillBeingWritten (nothing done) when its writer was not done."""
        self._check_work_folder()
        source = self._work.file(job.work_name)
        if not os.path.lexists(source):
            return self._already_disposed(job)
        # Compared again before every try, until the first byte is overwritten: a move keeps
        # the original until its copy is verified, and an unlink is all or nothing, so while
        # the file is there nothing was done to it. Only a shred that began changed it itself.
        if not self._shred_began(job):
            check_unchanged(source, job, self._jobs, hold_unseen=self._hold_unseen)
        if self._policy == "move":
            self._move(job, source, self._archive_for(job))
            return "moved"
        if self._policy == "shred":
            shred(source, begins=lambda: self._jobs.record_disposal_start(job.id))
            return "shredded"
        self._jobs.record_disposal_start(job.id)
        try:
            source.unlink()
        except OSError:
            self._jobs.forget_disposal_start(job.id)  # nothing was deleted: never say it was
            raise
        faults.point("disposal.unlinked")
        fsync_dir(self._work.path)
        return "deleted"

    def _shred_began(self, job: Job) -> bool:
        """A shred of this content overwrote bytes already: a start recorded under `shred`
        with no move target (a move's start, from before a new version, is no shred's)."""
        return self._policy == "shred" and job.disposal_started is not None and not job.disposed_to

    def _archive_for(self, job: Job) -> Path:
        """The archive a moved original goes to. Gone from the settings by a reload after the
        transcript recorded `move`: this original waits (the others go on)."""
        if self._archive is None:
            raise FolderUnusable(
                errno.ENOENT,
                f'the transcript of job {job.id} records disposal = "move" but archive_dir '
                "is no longer set: set it again and reload; the original waits in the work "
                "folder",
            )
        return self._archive

    def quarantine(self, job: Job, error: str) -> Path:
        """Move a permanently failed original to failed_dir beside `<name>.error.json`.
        Never shredded: the user may want to look at it or fix the decoder. An original that
        vanished gets the reason file alone, where it would have been."""
        self._check_work_folder()
        source = self._work.file(job.work_name)
        target = Path(job.disposed_to) if job.disposed_to else None
        if os.path.lexists(source):
            target = self._move(job, source, self._failed, reserve=len(REASON_SUFFIX), of_job=False)
        elif target is None:
            target = self._target(job, self._failed, reserve=len(REASON_SUFFIX))
        report = {"error": error, "attempts": job.attempts, "time": _now()}
        if not os.path.lexists(target):
            report["original"] = "vanished before it could be moved here"
        reason = target.with_name(target.name + REASON_SUFFIX)
        publish_bytes(
            reason,
            json.dumps(report, indent=2).encode() + b"\n",
            mode=self._mode,
            label="reason",
        )
        fsync_dir(reason.parent)
        return target

    def _check_work_folder(self) -> None:
        if problem := self._work.problem():
            raise FolderUnusable(errno.ENOENT, problem)

    def _already_disposed(self, job: Job) -> str:
        if self._policy == "move":
            target = Path(job.disposed_to) if job.disposed_to else None
            if target is not None and _is_copy_of(target, job):
                return "already-disposed"
        elif job.disposal_started is not None:
            return "already-disposed"
        raise RecordingVanished(f"{self._work.vanished()} (its transcript is published)")

    def _move(
        self, job: Job, source: Path, root: Path, reserve: int = 0, *, of_job: bool = True
    ) -> Path:
        """Move the original below `root` (a hard link, or a verified copy), then unlink it.
        `of_job`: the copy must be the bytes the transcript describes (an archived original);
        otherwise the bytes that are there (a failed one, whatever it holds now)."""
        target = Path(job.disposed_to) if job.disposed_to else None
        if target is None or not _holds(target, source):
            target = self._target(job, root, reserve)
            self._jobs.record_disposal_target(job.id, str(target))
            self._jobs.record_disposal_start(job.id)
            faults.point("disposal.linking")
            try:
                link_or_copy_no_overwrite(source, target)
            except OSError:
                if not os.path.lexists(target):  # nothing was made: nothing has begun
                    self._jobs.forget_disposal_start(job.id)
                raise
            faults.point("disposal.linked")
        if not (os.path.samefile(target, source) or self._copied(target, source, job, of_job)):
            # A copy of other bytes (the recording changed while it was copied): not a copy
            # of the recording, so it goes; the next try compares the recording again.
            target.unlink()
            fsync_dir(target.parent)
            raise OSError(
                errno.EAGAIN,
                f"the copy at {target} does not match the recording (it changed while it was "
                "copied): the recording is compared again",
            )
        fsync_dir(target.parent)
        faults.point("disposal.target_fsynced")
        source.unlink()
        faults.point("disposal.unlinked")
        fsync_dir(self._work.path)
        faults.point("disposal.work_fsynced")
        return target

    @staticmethod
    def _copied(target: Path, source: Path, job: Job, of_job: bool) -> bool:
        return _is_copy_of(target, job) if of_job else _same_bytes(target, source)

    def _target(self, job: Job, root: Path, reserve: int) -> Path:
        """A free name for the original below `root`, mirroring its inbox folder (or, where
        that path cannot exist, at the top of `root`), never inside the inbox. In failed_dir
        the reason file's name must be free too (a vanished recording left one alone)."""
        relpath = PurePosixPath(os.fsdecode(job.relpath))
        companion = REASON_SUFFIX if root == self._failed else ""
        if not root.is_dir():  # away for now: a name chosen there now would not be free later
            if os.path.lexists(root):
                raise FolderUnusable(errno.ENOTDIR, f"{root} is not a folder: make it one again")
            raise FolderUnusable(errno.ENOENT, f"{root} is missing (removed or unmounted?)")
        check_outside(root, self._work.inbox)
        try:
            folder = make_folders(root, Path(relpath.parent))
            target = _archive_name(folder, job, relpath.name) if root == self._archive else None
            target = target or unique_name(folder, relpath.name, reserve, companion)
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            folder = root
            target = unique_name(root, relpath.name, reserve, companion)
        check_outside(folder, self._work.inbox)
        return target


def _archive_name(folder: Path, job: Job, name: str) -> Path | None:
    """An archived original keeps its own name where it is free (None: the caller takes
    it). Where the same name was dropped before, the name says which transcript is its:
    `x-3.wav` beside `x-3.json`; and the same recording dropped again, whose transcript is
    the first drop's, is `x (copy 2).wav`, outside that numbering."""
    if not os.path.lexists(folder / name):
        return None
    if job.state == JobState.DUPLICATE:
        return unique_name(folder, name, numbered=" (copy {})")
    return _beside_transcript(folder, job, name)


def _beside_transcript(folder: Path, job: Job, name: str) -> Path | None:
    """The name that matches the transcript's numbered one (`x-3.json` for `x.wav`:
    `x-3.wav`), if that is free; else None (the first free name, which may differ)."""
    stem, dot, suffix = name.rpartition(".")
    if not job.outputs or not stem:
        return None
    published = PurePosixPath(job.outputs[0]).stem
    if not (published.startswith(f"{stem}-") and published[len(stem) + 1 :].isdigit()):
        return None
    candidate = folder / f"{published}{dot}{suffix}"
    if len(os.fsencode(candidate.name)) > NAME_MAX or os.path.lexists(candidate):
        return None
    return candidate


def _is_copy_of(target: Path, job: Job) -> bool:
    """True when `target` holds exactly the job's recording: its size and SHA-256."""
    try:
        if os.stat(target, follow_symlinks=False).st_size != job.size:
            return False
        return hash_file(target).sha256 == job.sha256
    except OSError:
        return False


def _holds(target: Path, source: Path) -> bool:
    """True when an earlier, interrupted move already put `source` at `target`: the same
    file (a hard link), or, across filesystems, a copy with the same bytes. On one
    filesystem the same bytes are not enough: that is another recording's file (the same
    recording dropped twice) and taking it for ours would leave one copy for two drops."""
    try:
        found = os.stat(target, follow_symlinks=False)
        ours = os.stat(source, follow_symlinks=False)
    except OSError:
        return False
    if os.path.samestat(found, ours):
        return True
    return found.st_dev != ours.st_dev and _same_bytes(target, source)


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


def shred(path: Path, begins: Callable[[], None] = lambda: None) -> None:
    """Overwrite a single-link regular file through a validated descriptor, fsync, unlink.
    `begins` is called just before the first byte is overwritten: until then the file is
    untouched, and a try that failed earlier (it could not be opened) changed nothing.

    Never the `shred` command: it follows symlinks and `-f` chmods the target. What this
    cannot promise (SSDs, copy-on-write filesystems, snapshots) is in docs/how-it-works.md.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError as error:
        raise PermissionError(error.errno, _cannot_write(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise OSError(f"refusing to shred {path}: not a single-link regular file")
        begins()
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


def _cannot_write(path: Path) -> str:
    owner = os.stat(path).st_uid
    if owner == os.geteuid():  # ours, yet not writable: made read-only or immutable
        return (
            f"cannot shred {path.name}: it is read-only or immutable (`lsattr`, `chattr -i`) "
            'even for the service user; make it writable, or use disposal = "delete"'
        )
    return (
        "cannot shred a recording the service user may not write to (it belongs to "
        f"user {owner}): make recordings writable by it (Samba: "
        '"create mask = 0660" with its group), or use disposal = "delete"'
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
