"""Intake: from settled inbox paths to claimed, queued jobs.

A claim opens the file without following symlinks or blocking on FIFOs, checks it is a
single-link regular file on the inbox's filesystem, records the intent in the queue, renames
it into the private work folder (atomic: same filesystem) and hashes it through the same
descriptor (large files on a thread of their own). The record comes first so a crash at any
point leaves nothing unaccounted for; a claim that fails leaves no record.

Files not taken yet are remembered with their reason (for `status`): unfinished ones until
they change, or until they have been unchanged for `stalled_seconds` (then they are taken as
they are, flagged incomplete; never an empty one); ones refused for a reason that can pass (a
writer still holds the file open, a second hard link, no permission, any error reaching that
one path) are looked at again on every rescan. One path's error is that path's problem: every
other file is still taken.
"""

import errno
import os
import queue
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed import faults
from transcribed.backoff import Backoff
from transcribed.files.content import hash_descriptor, open_for_writing
from transcribed.files.durable import fsync_dir
from transcribed.files.filesystems import sees_every_writer
from transcribed.files.folders import link_free_name, open_below, stat_below
from transcribed.files.names import display_name
from transcribed.intake.completeness import incomplete_reason
from transcribed.intake.hashing import LARGE_FILE_BYTES, LargeFileHasher, finish_claim_logged
from transcribed.intake.readiness import Identity, SettleTracker
from transcribed.intake.reconcile import Reconciler
from transcribed.intake.strays import Strays
from transcribed.intake.watcher import walk_files
from transcribed.logs import get_logger
from transcribed.loops.supervisor import Loop
from transcribed.state.queue import JobQueue, JobState
from transcribed.state.workfolder import WorkFolder, work_name

log = get_logger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class Refused(Exception):
    """This inbox entry is not something we may take (symlink, FIFO, hard link, …)."""


class NotYet(Refused):
    """Not taken now, for a reason that can pass without the file changing (a second hard
    link, no permission, a writer that still holds it open): looked at on every rescan, or
    `look_again` seconds from now."""

    def __init__(self, reason: str, look_again: float | None = None) -> None:
        super().__init__(reason)
        self.look_again = look_again


# Said of a file whose writers the kernel cannot show us (file.content.open_for_writing).
_UNSEEN = (
    "no way to tell from here whether a writer still has it open (a network or FUSE mount, "
    "or another user's file without CAP_LEASE): taken once unchanged for settle_seconds_unseen"
)


class NotFinished(Refused):
    """The file looks unfinished (truncated, header not finalized, empty); taken once it
    changes (or, unless empty, once it stalled)."""

    def __init__(self, reason: str, stalls: bool = True) -> None:
        super().__init__(reason)
        self.stalls = stalls


@dataclass
class _Waiting:
    """An inbox file not taken: why, since when (intake clock), unchanged as what (None when it
    could not even be looked at), whether the next rescan tries again (a reason that can pass)
    or only a change does (unfinished), and whether `stalled_seconds` unchanged takes it
    anyway (never for an empty file: there is nothing to take)."""

    identity: Identity | None
    reason: str
    since: float
    retry: bool = False
    stalls: bool = True
    look_again_at: float | None = None  # intake clock: looked at then, not only at a rescan


@dataclass
class Intake:
    """Owns the inbox side: arrivals, settling, rescans, claims and reconciling the work
    folder with the database. Driven by `step`."""

    inbox: Path
    work: WorkFolder
    jobs: JobQueue
    arrivals: "queue.SimpleQueue[str]"
    settle_seconds: float
    rescan_seconds: float
    clock: Callable[[], float] = time.monotonic
    # An unfinished file unchanged this long is taken anyway (a recorder that crashed).
    stalled_seconds: float = 3600.0
    # Unchanged this long, when the kernel cannot say whether a writer still has it open.
    settle_seconds_unseen: float = 120.0
    hasher: LargeFileHasher | None = None
    reconciler: Reconciler | None = None

    def __post_init__(self) -> None:
        self._tracker = SettleTracker(self.settle_seconds, self._look, self.clock)
        self._ignored: dict[str, Identity] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._folders: dict[str, str] = {}  # inbox folders that cannot be listed, and why
        self._strays = Strays(self.inbox)  # files that are not recordings: logged once each
        self._next_rescan = self.clock() + self.rescan_seconds
        self._rescan_requested = False
        self.last_rescan: float | None = None  # clock() of the last full rescan

    def request_rescan(self) -> None:
        """Thread-safe: make the next step rescan (after an observer restart)."""
        self._rescan_requested = True

    def step(self) -> int:
        """Take in new arrivals, rescan when due, claim what has settled; return claims made.
        Nothing happens while the inbox is not the folder we opened (the health loop says so
        and reopens it)."""
        if self.work.problem() is not None:
            return 0
        self._drain_arrivals()
        self._look_again_when_due()
        if self._rescan_requested or self.clock() >= self._next_rescan:
            self._rescan_requested = False
            self.rescan()
        return sum(
            self._claim_logged(relpath, identity) for relpath, identity in self._tracker.ready()
        )

    def rescan(self) -> None:
        """Treat every candidate in the inbox as arrived (covers lost or impossible events),
        and reconcile the work folder with the database."""
        self._next_rescan = self.clock() + self.rescan_seconds
        if self.reconciler is not None:
            self.reconciler.run()
        unreadable: dict[str, str] = {}

        def note(relfolder: str, error: OSError) -> None:
            why = error.strerror if error.errno == errno.EXDEV else None
            reason = why or _cannot("list this folder", error)
            unreadable[f"{relfolder}/" if relfolder else "./"] = reason

        for relpath in self._strays.recordings_among(walk_files(self.inbox, note)):
            self._tracker.arrived(relpath)
        for relpath in list(self._waiting):  # re-looked at: stalled ones come due by time
            self._tracker.arrived(relpath)
        self._report_folders(unreadable)
        self.last_rescan = self.clock()

    def _report_folders(self, unreadable: dict[str, str]) -> None:
        """Folders of the inbox that could not be listed (what is in them cannot be seen):
        shown in `status` while they stay so, logged once each."""
        for folder in self._folders.keys() - unreadable.keys():
            self.jobs.clear_waiting(os.fsencode(folder))
        for folder, reason in unreadable.items():
            if self._folders.get(folder) != reason:
                self.jobs.set_waiting(os.fsencode(folder), reason, time.time())
                log.warning("scan.unreadable_folder", folder=display_name(folder), reason=reason)
        self._folders = unreadable

    def loop(self, tick: float = 0.25) -> Loop:
        """How the intake thread runs: a turn every `tick`; after a failed turn (the state dir
        is full…) 2 s, doubling up to a minute, then `after_failure`."""
        return Loop("intake", self.step, tick, Backoff(2.0, 60.0), after_failure=self.after_failure)

    def after_failure(self) -> None:
        """Look at everything again (files that had settled in the failed step are no longer
        being watched), and finish any claim the failure cut short."""
        self.request_rescan()
        busy = self.hasher.in_flight if self.hasher is not None else frozenset()
        recover_claims(self.jobs, self.work, skip=busy)

    def _look_again_when_due(self) -> None:
        now = self.clock()
        for relpath, waiting in self._waiting.items():
            if waiting.look_again_at is not None and waiting.look_again_at <= now:
                waiting.look_again_at = None
                self._tracker.arrived(relpath)

    def _drain_arrivals(self) -> None:
        while True:
            try:
                self._tracker.arrived(self.arrivals.get_nowait())
            except queue.Empty:
                return

    def _look(self, relpath: str) -> Identity | None:
        try:
            identity = Identity.of(stat_below(self.inbox, relpath))
        except (FileNotFoundError, NotADirectoryError):
            self._ignored.pop(relpath, None)  # gone: nothing to remember for months
            self._stop_waiting(relpath)
            return None
        except OSError as error:  # this path's problem (too long, no permission, EIO, …)
            self._wait(relpath, None, _cannot("be looked at", error), retry=True)
            return None
        waiting = self._waiting.get(relpath)
        if waiting is not None and waiting.identity == identity and not waiting.retry:
            return identity if self._stalled(waiting) else None
        # Refusals are logged once, not on every rescan, until the entry changes.
        return None if self._ignored.get(relpath) == identity else identity

    def _unseen_wait_left(self, relpath: str, identity: Identity) -> float:
        """Seconds until a file whose writers cannot be seen has been unchanged (waiting, as
        `identity`) for `settle_seconds_unseen`."""
        waiting = self._waiting.get(relpath)
        if waiting is None or waiting.identity != identity:
            return self.settle_seconds_unseen
        return max(0.0, waiting.since + self.settle_seconds_unseen - self.clock())

    def _stalled(self, waiting: _Waiting) -> bool:
        return self.clock() - waiting.since >= self.stalled_seconds and waiting.stalls

    def _claim_logged(self, relpath: str, identity: Identity) -> bool:
        try:
            return self.claim(relpath, identity)
        except NotFinished as unfinished:
            self._wait(relpath, identity, str(unfinished), stalls=unfinished.stalls)
        except NotYet as blocked:
            self._wait(relpath, identity, str(blocked), retry=True, look_again=blocked.look_again)
        except Refused as refusal:
            self._ignored[relpath] = identity
            self._stop_waiting(relpath)
            log.warning("intake.ignored", file=display_name(relpath), reason=str(refusal))
        except OSError as error:  # tried again at the next rescan
            self._wait(relpath, identity, _cannot("be claimed", error), retry=True)
        return False

    def _wait(
        self,
        relpath: str,
        identity: Identity | None,
        reason: str,
        retry: bool = False,
        stalls: bool = True,
        look_again: float | None = None,
    ) -> None:
        """Remember an inbox file that is not taken yet, and why, for `status`; logged once
        per reason and identity, not on every rescan."""
        known = self._waiting.get(relpath)
        again = self.clock() + look_again if look_again is not None else None
        if known is not None and known.identity == identity and known.reason == reason:
            known.look_again_at = again
            return
        since = known.since if known is not None and known.identity == identity else None
        self._waiting[relpath] = _Waiting(
            identity, reason, since or self.clock(), retry, stalls, again
        )
        self.jobs.set_waiting(os.fsencode(relpath), reason, time.time())
        if retry:
            log.warning("intake.claim_failed", file=display_name(relpath), reason=reason)
        else:
            log.info("intake.waiting", file=display_name(relpath), reason=reason)

    def _stop_waiting(self, relpath: str) -> None:
        if self._waiting.pop(relpath, None) is not None:
            self.jobs.clear_waiting(os.fsencode(relpath))

    def claim(self, relpath: str, settled: Identity) -> bool:
        """Move one settled file into the work folder and queue it; False if it changed."""
        parts = PurePosixPath(relpath).parts
        parent_fd = open_folder_below(self.inbox, parts[:-1])
        try:
            fd = _open_file(parts[-1], parent_fd)
            try:
                return self._claim_open_file(relpath, parts[-1], parent_fd, fd, settled)
            finally:
                os.close(fd)
        finally:
            os.close(parent_fd)

    def _claim_open_file(
        self, relpath: str, name: str, parent_fd: int, fd: int, settled: Identity
    ) -> bool:
        info = os.fstat(fd)
        _check_claimable(info, os.stat(self.inbox).st_dev)
        if Identity.of(info) != settled:
            self._tracker.arrived(relpath)  # changed since it settled: watch it again
            return False
        writers = open_for_writing(fd)
        if writers:
            raise NotYet("still open for writing by another program (taken once it is closed)")
        unseen = writers is None or not sees_every_writer(info.st_dev)
        if unseen and (left := self._unseen_wait_left(relpath, settled)) > 0:
            raise NotYet(_UNSEEN, look_again=left)
        incomplete = incomplete_reason(fd, info.st_size, info.st_mtime_ns)
        waiting = self._waiting.get(relpath)
        if incomplete and not (waiting is not None and self._stalled(waiting)):
            raise NotFinished(incomplete, stalls=info.st_size > 0)
        target = work_name(relpath)
        job_id = self.jobs.begin_claim(os.fsencode(relpath), target)
        if not self._move_or_abandon(job_id, name, parent_fd, target, info):
            return False
        self._stop_waiting(relpath)
        if incomplete:
            self.jobs.mark_incomplete(job_id, incomplete)
            log.warning(
                "intake.taken_incomplete",
                file=display_name(relpath),
                reason=incomplete,
                unchanged_seconds=round(self.clock() - waiting.since) if waiting else None,
            )
        if self.hasher is not None and info.st_size >= LARGE_FILE_BYTES:
            self.hasher.submit(job_id, relpath)
            log.info("intake.hashing_apart", file=display_name(relpath), bytes=info.st_size)
            return True
        finish_claim_logged(self.jobs, job_id, relpath, hash_descriptor(fd))
        return True

    def _move_or_abandon(
        self, job_id: int, name: str, parent_fd: int, target: str, info: os.stat_result
    ) -> bool:
        """Rename into the work folder; a claim that did not move the file leaves no row."""
        try:
            moved = self._move_to_work(name, parent_fd, target, info)
        except BaseException:
            if not os.path.lexists(self.work.file(target)):
                self.jobs.abandon_claim(job_id)
            raise
        if not moved:
            self.jobs.abandon_claim(job_id)
        return moved

    def _move_to_work(self, name: str, parent_fd: int, target: str, info: os.stat_result) -> bool:
        work_fd = os.open(self.work.path, _DIR_FLAGS)
        try:
            faults.point("claim.renaming", name)
            try:
                os.rename(name, target, src_dir_fd=parent_fd, dst_dir_fd=work_fd)
            except FileNotFoundError:
                return False
            faults.point("claim.renamed", name)
            moved = os.stat(target, dir_fd=work_fd, follow_symlinks=False)
            if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
                # Swapped between our checks and the rename: put it back untouched, never over
                # a file that took the name meanwhile (a sync tool renaming onto it again).
                back = link_free_name(parent_fd, target, name, temp_dir_fd=work_fd)
                if back != name:
                    log.warning(
                        "intake.put_back_renamed", file=display_name(name), now=display_name(back)
                    )
                return False
            os.fsync(work_fd)
            os.fsync(parent_fd)
            faults.point("claim.fsynced", name)
            return True
        finally:
            os.close(work_fd)


def open_folder_below(root: Path, parts: tuple[str, ...]) -> int:
    """The inbox folder holding a recording, reached without following a symlink. A symlink
    or non-folder on the way is refused for good; any other error (no permission, an I/O
    error) can pass."""
    try:
        return open_below(root, PurePosixPath(*parts) if parts else PurePosixPath())
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused("a folder on its path is a symbolic link (never followed)") from None
        raise NotYet(_cannot("enter its folder", error)) from None


def _cannot(what: str, error: OSError) -> str:
    """A reason that stays the same from one try to the next (no file names or random work
    names in it), so it is logged once, not on every rescan."""
    cause = os.strerror(error.errno) if error.errno else str(error)
    return f"cannot {what}: {cause}"


def _open_file(name: str, parent_fd: int) -> int:
    # Look before opening: opening a device node can have side effects (a tape rewinds).
    mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        raise Refused("symbolic link (never followed)")
    if not stat.S_ISREG(mode):
        raise Refused("not a regular file (FIFO, device, socket or folder)")
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=parent_fd)
    except OSError as error:
        if error.errno == 40:  # ELOOP: O_NOFOLLOW met a symlink
            raise Refused("symbolic link (never followed)") from None
        raise


def _check_claimable(info: os.stat_result, inbox_dev: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise Refused("not a regular file")
    if info.st_nlink != 1:
        raise NotYet(
            f"has {info.st_nlink} hard links; the other names would keep the data "
            "(taken once it has one name)"
        )
    if info.st_dev != inbox_dev:
        raise NotYet("on another filesystem than the inbox (a mount inside the inbox)")


def recover_claims(jobs: JobQueue, work: WorkFolder, skip: frozenset[int] = frozenset()) -> int:
    """Finish claims a crash interrupted: hash files that reached the work folder, forget
    others (but not the claims in `skip`, which are being hashed right now)."""
    finished = 0
    for job in jobs.in_state(JobState.CLAIMING):
        if job.id in skip:
            continue
        try:
            fd = os.open(work.file(job.work_name), _OPEN_FLAGS)
        except FileNotFoundError:
            jobs.abandon_claim(job.id)
            continue
        try:
            content = hash_descriptor(fd)
        finally:
            os.close(fd)
        fsync_dir(work.path)
        jobs.finish_claim(job.id, content)
        finished += 1
    return finished
