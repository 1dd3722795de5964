"""Intake: from settled inbox paths to claimed, queued jobs.

A claim opens the file without following symlinks or blocking on FIFOs, checks it is a
single-link regular file on the inbox's filesystem, records the intent in the queue, renames
it into the private work folder (atomic: same filesystem) and hashes it through the same
descriptor. The record comes first so a crash at any point leaves nothing unaccounted for.
"""

import contextlib
import hashlib
import os
import queue
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed import faults
from transcribed.completeness import incomplete_reason
from transcribed.durable import fsync_dir
from transcribed.errors import advice
from transcribed.logs import get_logger
from transcribed.names import display_name
from transcribed.queue import JobQueue, JobState
from transcribed.readiness import Identity, SettleTracker
from transcribed.strays import Strays
from transcribed.watcher import walk_files

log = get_logger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class Refused(Exception):
    """This inbox entry is not something we may take (symlink, FIFO, hard link, …)."""


class NotFinished(Refused):
    """The file looks unfinished (truncated, header not finalized); taken once it changes."""


@dataclass
class Intake:
    """Owns the inbox side: arrivals, settling, rescans and claims. Driven by `step`."""

    inbox: Path
    work_dir: Path
    jobs: JobQueue
    arrivals: "queue.SimpleQueue[str]"
    settle_seconds: float
    rescan_seconds: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.work_dir.mkdir(mode=0o700, exist_ok=True)
        self._inbox_dev = os.stat(self.inbox).st_dev
        if os.stat(self.work_dir).st_dev != self._inbox_dev:
            raise OSError(f"work folder {self.work_dir} is not on the inbox's filesystem")
        self._tracker = SettleTracker(self.settle_seconds, self._look, self.clock)
        self._ignored: dict[str, Identity] = {}
        self._strays = Strays(self.inbox)  # files that are not recordings: logged once each
        self._next_rescan = self.clock() + self.rescan_seconds
        self._rescan_requested = False
        self.last_rescan: float | None = None  # clock() of the last full rescan

    def request_rescan(self) -> None:
        """Thread-safe: make the next step rescan (after an observer restart)."""
        self._rescan_requested = True

    def step(self) -> int:
        """Take in new arrivals, rescan when due, claim what has settled; return claims made."""
        self._drain_arrivals()
        if self._rescan_requested or self.clock() >= self._next_rescan:
            self._rescan_requested = False
            self.rescan()
        return sum(
            self._claim_logged(relpath, identity) for relpath, identity in self._tracker.ready()
        )

    def rescan(self) -> None:
        """Treat every candidate in the inbox as arrived: covers lost or impossible events."""
        self._next_rescan = self.clock() + self.rescan_seconds
        for relpath in self._strays.recordings_among(walk_files(self.inbox)):
            self._tracker.arrived(relpath)
        self.last_rescan = self.clock()

    def run(self, stop: threading.Event, tick: float = 0.25) -> None:
        """Plain runner for the intake thread."""
        failures = 0
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except (OSError, sqlite3.Error) as error:  # e.g. the state dir is full
                failures += 1
                log.error("intake.cannot_record", error=str(error), hint=advice(error))
                self._recover_after_failure(stop, failures)
            except Exception:  # a bug: keep taking files in; logged and retried
                failures += 1
                log.exception("intake.step_failed")
                self._recover_after_failure(stop, failures)
            stop.wait(tick)

    def _recover_after_failure(self, stop: threading.Event, failures: int) -> None:
        """Back off; then finish any claim the failure cut short, and look at everything again
        (files that had settled in the failed step are no longer being watched)."""
        stop.wait(min(60.0, 2.0**failures))
        with contextlib.suppress(OSError, sqlite3.Error):
            recover_claims(self.jobs, self.work_dir)
        self.request_rescan()

    def _drain_arrivals(self) -> None:
        while True:
            try:
                self._tracker.arrived(self.arrivals.get_nowait())
            except queue.Empty:
                return

    def _look(self, relpath: str) -> Identity | None:
        try:
            identity = Identity.of(os.stat(self.inbox / relpath, follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            self._ignored.pop(relpath, None)  # gone: nothing to remember for months
            return None
        # Refusals are logged once, not on every rescan, until the entry changes.
        return None if self._ignored.get(relpath) == identity else identity

    def _claim_logged(self, relpath: str, identity: Identity) -> bool:
        try:
            return self.claim(relpath, identity)
        except NotFinished as unfinished:
            self._ignored[relpath] = identity  # looked at again when it changes
            log.info("intake.waiting", file=display_name(relpath), reason=str(unfinished))
        except Refused as refusal:
            self._ignored[relpath] = identity
            log.warning("intake.ignored", file=display_name(relpath), reason=str(refusal))
        except OSError as error:
            log.warning("intake.claim_failed", file=display_name(relpath), error=str(error))
        return False

    def claim(self, relpath: str, settled: Identity) -> bool:
        """Move one settled file into the work folder and queue it; False if it changed."""
        parts = PurePosixPath(relpath).parts
        parent_fd = _open_folder(self.inbox, parts[:-1])
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
        _check_claimable(info, self._inbox_dev)
        if Identity.of(info) != settled:
            self._tracker.arrived(relpath)  # changed since it settled: watch it again
            return False
        if reason := incomplete_reason(fd, info.st_size, info.st_mtime_ns):
            raise NotFinished(reason)
        work_name = f"{uuid.uuid4().hex}{PurePosixPath(name).suffix.lower()}"
        job_id = self.jobs.begin_claim(os.fsencode(relpath), work_name)
        if not self._move_to_work(name, parent_fd, work_name, info):
            self.jobs.abandon_claim(job_id)
            return False
        digest, size = hash_descriptor(fd)
        faults.point("claim.hashed", name)
        job = self.jobs.finish_claim(job_id, digest, size)
        log.info(
            "intake.claimed",
            job=job.id,
            file=display_name(relpath),
            bytes=size,
            duplicate_of=job.duplicate_of if job.state == JobState.DUPLICATE else None,
        )
        return True

    def _move_to_work(
        self, name: str, parent_fd: int, work_name: str, info: os.stat_result
    ) -> bool:
        work_fd = os.open(self.work_dir, _DIR_FLAGS)
        try:
            try:
                os.rename(name, work_name, src_dir_fd=parent_fd, dst_dir_fd=work_fd)
            except FileNotFoundError:
                return False
            faults.point("claim.renamed", name)
            moved = os.stat(work_name, dir_fd=work_fd, follow_symlinks=False)
            if (moved.st_dev, moved.st_ino) != (info.st_dev, info.st_ino):
                # Swapped between our checks and the rename: put it back untouched.
                os.rename(work_name, name, src_dir_fd=work_fd, dst_dir_fd=parent_fd)
                return False
            os.fsync(work_fd)
            os.fsync(parent_fd)
            faults.point("claim.fsynced", name)
            return True
        finally:
            os.close(work_fd)


def _open_folder(root: Path, parts: tuple[str, ...]) -> int:
    """Open a folder below `root` one component at a time, never following a symlink."""
    fd = os.open(root, _DIR_FLAGS)
    for part in parts:
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as error:
            os.close(fd)
            raise Refused(
                f"folder {display_name(part)} cannot be entered safely: {error}"
            ) from None
        os.close(fd)
        fd = child
    return fd


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
        raise Refused(f"has {info.st_nlink} hard links; the other names would keep the data")
    if info.st_dev != inbox_dev:
        raise Refused("on another filesystem than the inbox (a mount inside the inbox)")


def hash_descriptor(fd: int) -> tuple[str, int]:
    """SHA-256 and size of everything readable through `fd`, from the start."""
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def recover_claims(jobs: JobQueue, work_dir: Path) -> int:
    """Finish claims a crash interrupted: hash files that reached the work folder, forget others."""
    finished = 0
    for job in jobs.in_state(JobState.CLAIMING):
        try:
            fd = os.open(work_dir / job.work_name, _OPEN_FLAGS)
        except FileNotFoundError:
            jobs.abandon_claim(job.id)
            continue
        try:
            digest, size = hash_descriptor(fd)
        finally:
            os.close(fd)
        fsync_dir(work_dir)
        jobs.finish_claim(job.id, digest, size)
        finished += 1
    return finished
