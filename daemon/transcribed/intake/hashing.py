"""Hashing a claimed file, and recording the finished claim: in the claiming thread for most
files, on a thread of its own for large ones (`LargeFileHasher`). Used by the intake's claims
and by the reconciler's adoptions alike."""

import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

from transcribed import faults
from transcribed.backoff import Backoff, backoff
from transcribed.errors import advice
from transcribed.files.content import Content, hash_descriptor
from transcribed.files.names import display_name
from transcribed.logs import get_logger
from transcribed.loops.supervisor import Loop
from transcribed.state.queue import JobQueue, JobState
from transcribed.state.workfolder import WorkFolder

log = get_logger(__name__)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Files at least this big are hashed on their own thread: hashing 20 GB takes a minute, and
# the files dropped after it must not wait that long.
LARGE_FILE_BYTES = 256 << 20


def finish_claim_logged(jobs: JobQueue, job_id: int, relpath: str, content: Content) -> None:
    faults.point("claim.hashed", os.path.basename(relpath))
    job = jobs.finish_claim(job_id, content)
    log.info(
        "intake.claimed",
        job=job.id,
        file=display_name(relpath),
        bytes=content.size,
        duplicate_of=job.duplicate_of if job.state == JobState.DUPLICATE else None,
    )


class LargeFileHasher:
    """Hashes large claimed files on its own thread (with its own database connection), so
    one 20 GB recording does not hold up every file dropped after it. A hash that fails (an
    I/O error, a busy database) is tried again later, the wait doubling up to 10 minutes. A
    claim it has not finished when the daemon stops stays `claiming`; the next start
    finishes it."""

    def __init__(self, database: Path, work: WorkFolder, stop: threading.Event) -> None:
        self._database = database
        self._work = work
        self._stop = stop
        # Not a SimpleQueue: its get(timeout) can block for good once a signal interrupts
        # its wait after the deadline has passed (SIGSTOP then SIGCONT: seen at a stop,
        # which then waited for this thread in vain).
        self._pending: queue.Queue[tuple[int, str]] = queue.Queue()
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._retries: list[tuple[float, int, str]] = []  # (when, job, relpath)
        self._failures: dict[int, int] = {}  # job -> its failed hashes in a row
        self._jobs: JobQueue | None = None  # its own connection

    @property
    def in_flight(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._in_flight)

    def submit(self, job_id: int, relpath: str) -> None:
        with self._lock:
            self._in_flight.add(job_id)
        self._pending.put((job_id, relpath))

    def loop(self) -> Loop:
        """How the hasher's thread runs: it waits for work in `step` itself. A hash that
        fails waits its own backoff (`_hash_or_retry`); a turn fails only by a bug."""
        return Loop("hasher", self.step, 0.0, Backoff(5.0), close=self.close)

    def step(self) -> bool:
        """Hash the next large file, waiting up to half a second for one; True when one was."""
        self._retry_due()
        try:
            job_id, relpath = self._pending.get(timeout=0.5)
        except queue.Empty:
            return False
        self._hash_or_retry(job_id, relpath)
        return True

    def close(self) -> None:
        """Once its thread ends (on that thread): its database connection."""
        if self._jobs is not None:
            self._jobs.close()

    def _hash_or_retry(self, job_id: int, relpath: str) -> None:
        if self._jobs is None:  # opened on the hasher's own thread
            self._jobs = JobQueue(self._database)
        try:
            self._hash(self._jobs, job_id, relpath)
        except FileNotFoundError as error:  # gone from the work folder: the start's
            log.error("intake.hash_failed", error=str(error))  # recovery looks again
        except (OSError, sqlite3.Error) as error:
            self._failures[job_id] = failures = self._failures.get(job_id, 0) + 1
            wait = backoff(failures, first=5.0)
            self._retries.append((time.monotonic() + wait, job_id, relpath))
            log.error("intake.hash_failed", error=str(error), hint=advice(error), retry_in=wait)
            return  # still in flight: the reconciler must not take it meanwhile
        self._failures.pop(job_id, None)
        with self._lock:
            self._in_flight.discard(job_id)

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [retry for retry in self._retries if retry[0] <= now]
        for retry in due:
            self._retries.remove(retry)
            self._pending.put(retry[1:])

    def _hash(self, jobs: JobQueue, job_id: int, relpath: str) -> None:
        job = jobs.get(job_id)
        fd = os.open(self._work.file(job.work_name), _OPEN_FLAGS)
        try:
            content = hash_descriptor(fd, self._stop)
        finally:
            os.close(fd)
        if not self._stop.is_set():
            finish_claim_logged(jobs, job_id, relpath, content)
