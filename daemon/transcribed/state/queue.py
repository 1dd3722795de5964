"""The durable job queue: one SQLite row per file dropped into the inbox.

States and what each guarantees:
  claiming  -> the file is being renamed out of the inbox (or adopted from the work folder)
               and hashed; after a crash, `recover_claims` finishes the claim (work file
               present) or forgets it (file never moved).
  queued    -> the original sits in the work folder, waiting (not before `not_before`).
  running   -> an attempt has started; the attempt was counted in the same transaction,
               so a file that kills the daemon is eventually quarantined, not retried forever.
  published -> its transcript is durable in the outbox; only disposal is left.
  duplicate -> waits for job `duplicate_of`: the same name and content dropped again (disposed
               of, adding nothing, once that one is published), or the same content under
               another name while that one is being transcribed (then queued again, to
               publish its own transcript from that one's result without a model run).
  done      -> transcript durable and original disposed (verified).
  failed    -> permanently failed; the original is in failed_dir with a reason file (or, when
               it vanished from the work folder, the reason file alone says so).

The disk is the truth and this database its index (docs/design.md I5): `reconcile` compares the two.
Waits are wall-clock times in the database, so a clock that was far ahead and is corrected
would hold jobs for as long: a wait further away than the longest backoff counts as due.
"""

import dataclasses
import enum
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transcribed import faults
from transcribed.backoff import LONGEST_WAIT_SECONDS  # a wait further away: a wrong clock
from transcribed.files.content import Content, Fingerprint
from transcribed.state import schema
from transcribed.state.boot_clock import boot_time


class FailureKind(enum.StrEnum):
    UNREADABLE = "unreadable"  # not usable audio: failed at once
    GAVE_UP = "gave_up"  # crashed, hung or errored on every attempt
    KILLS_DAEMON = "kills_daemon"  # the daemon died during every attempt
    VANISHED = "vanished"  # the original left the work folder without us (inbox replaced…)
    UNWRITABLE = "unwritable"  # its transcript can never be written where the rules put it


class JobState(enum.StrEnum):
    CLAIMING = "claiming"
    QUEUED = "queued"
    RUNNING = "running"
    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    DONE = "done"
    FAILED = "failed"


# States whose content is, or will be, transcribed: the same name and content is a duplicate.
_LIVE = (JobState.QUEUED, JobState.RUNNING, JobState.PUBLISHED, JobState.DONE)
# States whose original is (or should be) in the work folder.
IN_WORK_FOLDER = (JobState.QUEUED, JobState.RUNNING, JobState.PUBLISHED, JobState.DUPLICATE)
# Work names of jobs indexed from the disk (a rebuilt database) that hold no original.
INDEXED_PREFIX = "indexed-"


@dataclass(frozen=True)
class Job:
    id: int
    state: JobState
    relpath: bytes
    work_name: str
    sha256: str | None
    size: int | None
    attempts: int
    duplicate_of: int | None
    error: str | None
    outputs: tuple[str, ...]
    disposed_to: str | None
    disposal_failures: int = 0
    failure_kind: str | None = None
    started: float | None = None
    finished: float | None = None
    audio_seconds: float | None = None
    processing_seconds: float | None = None
    progress_seconds: float | None = None
    expected_seconds: float | None = None
    language: str | None = None
    updated: float = 0.0
    request: str | None = None
    transient_failures: int = 0
    incomplete: str | None = None
    disposal_started: float | None = None
    progress_at: float | None = None
    progress_next_seconds: float | None = None
    not_before: float = 0.0
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    versions: int = 0
    disposal: str | None = None
    retry_started: float | None = None
    failure_reason: str | None = None
    created: float = 0.0  # when it was claimed (wall clock)
    claimed_boot: str | None = None  # ... and on the boot clock (`boot_clock`): which boot,
    claimed_uptime: float | None = None  # and the seconds since it

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The work file as it was when hashed (None before the claim finished)."""
        if self.size is None or self.mtime_ns is None or self.ctime_ns is None:
            return None
        return Fingerprint(self.size, self.mtime_ns, self.ctime_ns)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class JobQueue:
    """One connection. Use each JobQueue from one thread at a time (it may be created in another
    and handed over); every method commits before it returns."""

    def __init__(
        self, database: Path, clock: Callable[[], float] = time.time, *, read_only: bool = False
    ) -> None:
        """`read_only`: a reader beside the daemon (the page): SQLite refuses every write, and
        the schema is taken as the daemon left it."""
        target = f"{database.absolute().as_uri()}?mode=ro" if read_only else str(database)
        self._db = sqlite3.connect(
            target, isolation_level=None, timeout=30, check_same_thread=False, uri=read_only
        )
        self._db.row_factory = sqlite3.Row
        self._now = clock
        self._path = database
        self._identity = _file_identity(database)
        if read_only:
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL defaults to NORMAL, which can lose the last commits on power loss; we promise more.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        schema.upgrade(self._db)

    def replaced(self) -> bool:
        """The file at the database's path is no longer the one opened here (deleted, or
        another put in its place): what is written from now on is lost at the next start."""
        return _file_identity(self._path) != self._identity

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def ping(self) -> None:
        """Raise if the database does not answer."""
        self._db.execute("SELECT 1").fetchone()

    def check(self) -> str:
        """SQLite's quick integrity check: "ok", or what is wrong."""
        return str(self._db.execute("PRAGMA quick_check").fetchone()[0])

    # --- claims ---------------------------------------------------------------------------

    def begin_claim(self, relpath: bytes, work_name: str) -> int:
        """Record the intent to move `relpath` to `work_name` before the rename happens. Its
        number is new: never one a retried job had (`jobs retry 33` twice must not find
        another recording under 33)."""
        now, booted = self._now(), boot_time()
        cursor = self._db.execute(
            "INSERT INTO jobs (id, state, relpath, work_name, created, updated, claimed_boot,"
            " claimed_uptime) VALUES ("
            " 1 + MAX(COALESCE((SELECT MAX(id) FROM jobs), 0),"
            "         COALESCE((SELECT MAX(job) FROM retried), 0)), ?, ?, ?, ?, ?, ?, ?)",
            (
                JobState.CLAIMING,
                relpath,
                work_name,
                now,
                now,
                booted.boot if booted else None,
                booted.seconds if booted else None,
            ),
        )
        assert cursor.lastrowid is not None
        faults.point("db.claiming")
        return cursor.lastrowid

    def adopt(self, relpath: bytes, work_name: str) -> int:
        """A work file with no live job (the database was lost, or is older than the file):
        claim it where it lies. A finished job's row that still names the file gives the
        name up, so the new claim can hold it."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET work_name = work_name || '#' || id"  # noqa: S608 ("?" only)
                f" WHERE work_name = ? AND state IN ({_marks(_FINISHED)})",
                (work_name, *_FINISHED),
            )
            return self.begin_claim(relpath, work_name)

    def finish_claim(self, job_id: int, content: Content) -> Job:
        """The file is in the work folder and hashed: queue it, or, when the same name with
        the same content is already live, mark it a duplicate that adds nothing (or, when
        that one is a transcript indexed from the disk whose original was missing, this file
        is that original: one job, whose disposal is now due). Repeating it (a claim
        finished twice after a crash) changes nothing."""
        with self._transaction() as db:
            claim = db.execute(
                "SELECT relpath, work_name FROM jobs WHERE id = ? AND state = ?",
                (job_id, JobState.CLAIMING),
            ).fetchone()
            if claim is not None:
                job_id = self._queue_claimed(db, job_id, claim, content)
        job = self.get(job_id)
        faults.point(f"db.{job.state}")
        return job

    def _queue_claimed(
        self, db: sqlite3.Connection, job_id: int, claim: sqlite3.Row, content: Content
    ) -> int:
        original = db.execute(
            # Only "?" placeholders are interpolated into the statement.
            f"SELECT id, work_name FROM jobs WHERE sha256 = ? AND relpath = ? AND id != ?"  # noqa: S608
            f" AND state IN ({_marks(_LIVE)}) ORDER BY id LIMIT 1",
            (content.sha256, claim["relpath"], job_id, *_LIVE),
        ).fetchone()
        now = self._now()
        if original is not None and original["work_name"].startswith(INDEXED_PREFIX):
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute(
                "UPDATE jobs SET state = ?, work_name = ?, updated = ?, not_before = 0"
                " WHERE id = ?",
                (JobState.PUBLISHED, claim["work_name"], now, original["id"]),
            )
            self._set_content(db, original["id"], content)
            return int(original["id"])
        state = JobState.DUPLICATE if original else JobState.QUEUED
        db.execute(
            "UPDATE jobs SET state = ?, duplicate_of = ?, updated = ?, not_before = ? WHERE id = ?",
            (state, original["id"] if original else None, now, now, job_id),
        )
        self._set_content(db, job_id, content)
        return job_id

    @staticmethod
    def _set_content(db: sqlite3.Connection, job_id: int, content: Content) -> None:
        db.execute(
            "UPDATE jobs SET sha256 = ?, size = ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
            (
                content.sha256,
                content.size,
                content.fingerprint.mtime_ns,
                content.fingerprint.ctime_ns,
                job_id,
            ),
        )

    def record_fingerprint(self, job_id: int, content: Content) -> None:
        """The work file was touched but its bytes are what was hashed (a chmod, a `touch`):
        remember the new fingerprint, so it is not hashed again next time."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET mtime_ns = ?, ctime_ns = ? WHERE id = ? AND sha256 = ?",
                (
                    content.fingerprint.mtime_ns,
                    content.fingerprint.ctime_ns,
                    job_id,
                    content.sha256,
                ),
            )

    def new_version(self, job_id: int, content: Content, delay: float) -> None:
        """The recording changed after it was taken (a writer that paused was not done): the
        job is now about the new content. It is transcribed again after `delay` (its writer
        may not be done yet either), its published files replaced when the new transcript is
        published; an attempt counted for the old content is given back. Never disposed of
        meanwhile: it is no longer published."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, duplicate_of = NULL, request = NULL, not_before = ?,"
                " disposal_started = NULL,"  # no disposal of the new content has begun
                " failure_reason = NULL,"  # nor is its failure decided
                " attempts = MAX(0, attempts - (state = ?)), versions = versions + 1,"
                " error = ?, updated = ? WHERE id = ?",
                (
                    JobState.QUEUED,
                    self._now() + delay,
                    JobState.RUNNING,
                    "changed after it was taken (its writer was not done): transcribed again",
                    self._now(),
                    job_id,
                ),
            )
            self._set_content(db, job_id, content)
        faults.point("db.new_version")

    def abandon_claim(self, job_id: int) -> None:
        """The rename never happened: forget the intent."""
        self._db.execute("DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, JobState.CLAIMING))

    def mark_incomplete(self, job_id: int, reason: str) -> None:
        """The file was taken although it never finished: transcribe what decodes, say so."""
        self._db.execute("UPDATE jobs SET incomplete = ? WHERE id = ?", (reason, job_id))

    # --- running --------------------------------------------------------------------------

    def next_job(self) -> Job | None:
        """Start the due queued job that has waited longest (arrival order; a job that failed
        goes behind the others): it becomes running and its attempt is counted, in one
        committed transaction before any work starts."""
        now = self._now()
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, updated = ?, started = ?,"  # noqa: S608
                " progress_seconds = 0, expected_seconds = NULL, progress_at = ?,"
                " progress_next_seconds = NULL"
                " WHERE id = (SELECT id FROM jobs WHERE state = ?"
                f" AND {_due()} ORDER BY {_TURN}, id LIMIT 1)"
                " RETURNING *",
                (JobState.RUNNING, now, now, now, JobState.QUEUED, *_due_args(now), now),
            ).fetchall()  # all rows read: the statement is finished before COMMIT
        if not rows:
            return None
        faults.point("db.running", os.fsdecode(bytes(rows[0]["relpath"])))
        return _job(rows[0])

    def start_request(self, job_id: int, request: str) -> Job | None:
        """Record what the model will be asked for this running job, and find a job with the
        same content and request: one with a published result to reuse (returned), or one
        being transcribed right now (returned, and this job becomes its duplicate, its attempt
        refunded, until that one finishes). One transaction, so two jobs of the same content
        starting at once never both run the model."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET request = ? WHERE id = ?", (request, job_id))
            row = db.execute(
                "SELECT t.* FROM jobs t JOIN jobs j ON j.id = ? AND t.sha256 = j.sha256"
                " WHERE t.request = ? AND t.id != j.id AND ("
                "   t.state = ? OR (t.state IN (?, ?) AND t.outputs IS NOT NULL))"
                " ORDER BY t.state = ?, t.id LIMIT 1",
                (
                    job_id,
                    request,
                    JobState.RUNNING,
                    JobState.PUBLISHED,
                    JobState.DONE,
                    JobState.RUNNING,
                ),
            ).fetchone()
            waits = row is not None and row["state"] == JobState.RUNNING
            if waits:
                db.execute(
                    "UPDATE jobs SET state = ?, duplicate_of = ?, attempts = attempts - 1,"
                    " updated = ? WHERE id = ?",
                    (JobState.DUPLICATE, row["id"], self._now(), job_id),
                )
        if waits:
            faults.point("db.duplicate")
        return _job(row) if row is not None else None

    def record_progress(
        self,
        job_id: int,
        done: float,
        expected: float | None,
        next_at_least: float | None = None,
    ) -> None:
        """Audio seconds transcribed so far, the length the header claims, and where the
        next answer will reach at least (`StreamProgress`), for `transcribed status`; not a durable
        step."""
        self._db.execute(
            "UPDATE jobs SET progress_seconds = ?, expected_seconds = ?, progress_at = ?,"
            " progress_next_seconds = ? WHERE id = ?",
            (done, expected, self._now(), next_at_least, job_id),
        )

    def mark_published(
        self,
        job_id: int,
        outputs: list[str],
        audio_seconds: float,
        processing_seconds: float,
        language: str | None = None,
        disposal: str | None = None,
    ) -> None:
        """The transcript files are durable; disposal of the original may start, by the
        `disposal` policy the transcript records."""
        self._set(
            job_id,
            JobState.PUBLISHED,
            outputs=json.dumps(outputs),
            disposal=disposal,
            error=None,
            audio_seconds=audio_seconds,
            processing_seconds=processing_seconds,
            finished=self._now(),
            transient_failures=0,
            not_before=0,
            language=language,
        )

    def requeue(
        self, job_id: int, delay: float, error: str | None, *, refund: bool, transient: bool = False
    ) -> None:
        """Back to the queue after `delay` seconds, behind the jobs already waiting; `refund`
        un-counts an attempt that was not the file's fault (shutdown, out of memory, disk
        full), and `transient` counts it among the consecutive transient failures."""
        self._db.execute(
            "UPDATE jobs SET state = ?, not_before = ?, error = ?, updated = ?,"
            " attempts = attempts - ?, transient_failures = transient_failures + ? WHERE id = ?",
            (
                JobState.QUEUED,
                self._now() + delay,
                error,
                self._now(),
                int(refund),
                int(transient),
                job_id,
            ),
        )

    def give_back_attempt(self, job_id: int) -> None:
        """Un-count the attempt `next_job` counted: this start was no try at the recording."""
        self._db.execute("UPDATE jobs SET attempts = attempts - 1 WHERE id = ?", (job_id,))

    def recover_running(self, *, refund: bool, job_id: int | None = None) -> int:
        """Attempts that were cut short go back to the queue: every running one (at start), or
        `job_id`'s if it is still running (while other workers' jobs run on); `refund`
        un-counts them (when the cause was ours, e.g. the database could not be written)."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = ?, updated = ?, attempts = attempts - ?"
            " WHERE state = ? AND (? IS NULL OR id = ?)",
            (JobState.QUEUED, self._now(), int(refund), JobState.RUNNING, job_id, job_id),
        )
        return cursor.rowcount

    # --- disposal -------------------------------------------------------------------------

    def record_disposal_target(self, job_id: int, target: str) -> None:
        """Remember where the original is being moved, so a retry after a crash reuses it."""
        self._db.execute(
            "UPDATE jobs SET disposed_to = ?, updated = ? WHERE id = ?",
            (os.fsencode(target), self._now(), job_id),  # bytes: names need not be UTF-8
        )
        faults.point("db.disposal_target")

    def record_disposal_start(self, job_id: int) -> None:
        """An irreversible disposal step is about to happen to this job's work file."""
        self._db.execute(
            "UPDATE jobs SET disposal_started = COALESCE(disposal_started, ?) WHERE id = ?",
            (self._now(), job_id),
        )

    def forget_disposal_start(self, job_id: int) -> None:
        """The step recorded as about to happen failed without changing the work file."""
        self._db.execute("UPDATE jobs SET disposal_started = NULL WHERE id = ?", (job_id,))

    def mark_done(self, job_id: int) -> None:
        """The original has been disposed of (verified); nothing is left to do for this file."""
        self._set(job_id, JobState.DONE)

    def record_failing(self, job_id: int, error: str, kind: FailureKind) -> None:
        """The job is about to fail for good with `error`: said before its original moves."""
        self._db.execute(
            "UPDATE jobs SET failure_reason = ?, failure_kind = ? WHERE id = ?",
            (error, kind, job_id),
        )

    def mark_failed(self, job_id: int, error: str, kind: FailureKind) -> None:
        """Permanently failed; the original has been moved to failed_dir (or vanished)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, updated = ?, error = ?, failure_kind = ?, finished = ?"
            " WHERE id = ?",
            (JobState.FAILED, self._now(), error, kind, self._now(), job_id),
        )
        faults.point("db.failed")

    def shares_transcript(self, job: Job, sha256: str | None = None) -> bool:
        """Another job of the same name and content (`sha256`, else the job's own) is
        published or done: the transcript under that name is its too (the outbox gives one
        name and content one transcript)."""
        row = self._db.execute(
            "SELECT 1 FROM jobs WHERE id != ? AND relpath = ? AND sha256 = ? AND state IN (?, ?)",
            (job.id, job.relpath, sha256 or job.sha256, JobState.PUBLISHED, JobState.DONE),
        ).fetchone()
        return row is not None

    def defer_disposal(self, job_id: int, delay: float, error: str) -> None:
        """Disposal failed (archive full, unwritable…): try again after `delay` seconds."""
        self._db.execute(
            "UPDATE jobs SET not_before = ?, error = ?, disposal_failures = disposal_failures + 1,"
            " updated = ? WHERE id = ?",
            (self._now() + delay, error, self._now(), job_id),
        )

    def disposals_due(self) -> list[Job]:
        """Originals that may be disposed of now: their own transcript is durable (published),
        or they are the same name and content as one whose transcript is; minus those
        waiting after a failure."""
        return self._awaiting_disposal(due=True)

    def awaiting_disposal(self) -> list[Job]:
        """Every original that only waits to be disposed of (due now or after a failure)."""
        return self._awaiting_disposal(due=False)

    def _awaiting_disposal(self, *, due: bool) -> list[Job]:
        now = self._now()
        rows = self._db.execute(
            "SELECT j.* FROM jobs j LEFT JOIN jobs o ON o.id = j.duplicate_of"  # noqa: S608
            f" WHERE ({_due('j.')} OR NOT ?) AND (j.state = ?"
            "   OR (j.state = ? AND o.state IN (?, ?) AND o.relpath = j.relpath))"
            " ORDER BY j.id",
            (
                *_due_args(now),
                due,
                JobState.PUBLISHED,
                JobState.DUPLICATE,
                JobState.PUBLISHED,
                JobState.DONE,
            ),
        )
        return [_job(row) for row in rows]

    def transcribe_again(self, job_id: int, reason: str) -> None:
        """Its transcript is no longer on disk, or no longer names its content (removed by
        hand, or replaced by a newer version of a recording it shared): before the original
        may go, it is transcribed again, as a job of its own."""
        self._db.execute(
            "UPDATE jobs SET state = ?, duplicate_of = NULL, request = NULL, not_before = 0,"
            " error = ?, updated = ? WHERE id = ? AND state IN (?, ?)",
            (
                JobState.QUEUED,
                reason,
                self._now(),
                job_id,
                JobState.DUPLICATE,
                JobState.PUBLISHED,
            ),
        )

    def release_duplicates(self) -> int:
        """Duplicates whose wait is over go back to the queue: those whose job failed or was
        forgotten (a chance of their own), and those under another name whose job now has a
        published result (to publish their own transcript from it)."""
        now = self._now()
        orphans = self._db.execute(
            "UPDATE jobs SET state = ?, duplicate_of = NULL, updated = ?, not_before = ?"
            " WHERE state = ? AND (duplicate_of IS NULL"
            "   OR duplicate_of IN (SELECT id FROM jobs WHERE state = ?))",
            (JobState.QUEUED, now, now, JobState.DUPLICATE, JobState.FAILED),
        ).rowcount
        ready = self._db.execute(
            "UPDATE jobs SET state = ?, updated = ?, not_before = ?"
            " WHERE state = ? AND EXISTS (SELECT 1 FROM jobs o WHERE o.id = jobs.duplicate_of"
            "   AND o.state IN (?, ?) AND o.relpath != jobs.relpath)",
            (JobState.QUEUED, now, now, JobState.DUPLICATE, JobState.PUBLISHED, JobState.DONE),
        ).rowcount
        return orphans + ready

    # --- reconciling with the disk --------------------------------------------------------

    def in_work_folder(self) -> list[Job]:
        """Jobs whose original should be in the work folder (claims in flight excluded)."""
        rows = self._db.execute(
            f"SELECT * FROM jobs WHERE state IN ({_marks(IN_WORK_FOLDER)})",  # noqa: S608
            IN_WORK_FOLDER,
        )
        return [_job(row) for row in rows]

    def make_due(self, job_id: int) -> None:
        """Whatever this job waits for, it is due now (its recording vanished: say so soon)."""
        self._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))

    def holds_work_name(self, work_name: str) -> bool:
        """True when a claim in flight or a live job owns this work file."""
        live = (JobState.CLAIMING, *IN_WORK_FOLDER)
        row = self._db.execute(
            f"SELECT 1 FROM jobs WHERE work_name = ? AND state IN ({_marks(live)})",  # noqa: S608
            (work_name, *live),
        ).fetchone()
        return row is not None

    def add_finished(self, job: Job) -> int:
        """Index a job found on disk (a published transcript, a failed recording) when the
        database is rebuilt: its state, name, content and files, as found."""
        values = {
            name: getattr(job, name)
            for name in (
                "sha256",
                "size",
                "error",
                "failure_kind",
                "audio_seconds",
                "finished",
                "request",
                "language",
            )
        }
        cursor = self._db.execute(
            "INSERT INTO jobs (state, relpath, work_name, outputs, disposed_to, created, updated,"  # noqa: S608
            f" {', '.join(values)}) VALUES (?, ?, ?, ?, ?, ?, ?, {_marks(tuple(values))})",
            (
                job.state,
                job.relpath,
                job.work_name,
                json.dumps(list(job.outputs)) if job.outputs else None,
                os.fsencode(job.disposed_to) if job.disposed_to else None,
                self._now(),
                self._now(),
                *values.values(),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    # --- files waiting in the inbox -------------------------------------------------------

    def set_waiting(self, relpath: bytes, reason: str, since: float) -> None:
        self._db.execute(
            "INSERT INTO waiting (relpath, reason, since) VALUES (?, ?, ?)"
            " ON CONFLICT (relpath) DO UPDATE SET reason = excluded.reason",
            (relpath, reason, since),
        )

    def clear_waiting(self, relpath: bytes | None = None) -> None:
        """Forget one waiting file, or (None) all: at start, the rescan finds them again."""
        if relpath is None:
            self._db.execute("DELETE FROM waiting")
        else:
            self._db.execute("DELETE FROM waiting WHERE relpath = ?", (relpath,))

    def waiting(self) -> list[tuple[bytes, str, float]]:
        """(relpath, reason, since) of each inbox file not taken yet, longest waiting first."""
        rows = self._db.execute("SELECT relpath, reason, since FROM waiting ORDER BY since")
        return [(bytes(row["relpath"]), row["reason"], row["since"]) for row in rows]

    # --- operators ------------------------------------------------------------------------

    def forget(self, job_id: int) -> Job:
        """Delete a finished (done or failed) job's row, so the same content is transcribed
        anew if it is dropped again. Raises KeyError or ValueError (not finished)."""
        with self._transaction() as db:
            job = self.get(job_id)
            if job.state not in (JobState.DONE, JobState.FAILED):
                raise ValueError(f"job {job_id} is {job.state}; only done or failed jobs")
            db.execute("UPDATE jobs SET duplicate_of = NULL WHERE duplicate_of = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def begin_retry(self, job_id: int, stale_after: float) -> Job | None:
        """Claim a failed job for `jobs retry`, so two retries of one job never both put it
        back: None when another retry holds it (begun less than `stale_after` seconds ago;
        an older one was cut short and is taken over)."""
        now = self._now()
        rows = self._db.execute(
            "UPDATE jobs SET retry_started = ? WHERE id = ? AND state = ?"
            " AND (retry_started IS NULL OR retry_started < ?) RETURNING *",
            (now, job_id, JobState.FAILED, now - stale_after),
        ).fetchall()
        return _job(rows[0]) if rows else None

    def abandon_retry(self, job_id: int) -> None:
        """The retry could not put the recording back: it stays failed, free to retry."""
        self._db.execute("UPDATE jobs SET retry_started = NULL WHERE id = ?", (job_id,))

    def finish_retry(self, job_id: int, relpath: bytes) -> None:
        """The recording is back in the inbox as `relpath`: forget the failed job, and remember
        where it went (for a later `jobs retry` of the same number)."""
        with self._transaction() as db:
            job = self.get(job_id)
            db.execute(
                "INSERT OR REPLACE INTO retried (job, relpath, sha256, at) VALUES (?, ?, ?, ?)",
                (job_id, relpath, job.sha256, self._now()),
            )
            db.execute("UPDATE jobs SET duplicate_of = NULL WHERE duplicate_of = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def retried_as(self, job_id: int) -> tuple[bytes, Job | None] | None:
        """For a job that `jobs retry` put back: the inbox path it got, and the job that took
        it in since (None while it waits in the inbox); None for a job never retried."""
        row = self._db.execute(
            "SELECT relpath, sha256, at FROM retried WHERE job = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        later = self._db.execute(
            "SELECT * FROM jobs WHERE relpath = ? AND sha256 IS ? AND created >= ?"
            " ORDER BY id LIMIT 1",
            (row["relpath"], row["sha256"], row["at"]),
        ).fetchone()
        return bytes(row["relpath"]), (_job(later) if later is not None else None)

    # --- hooks ----------------------------------------------------------------------------

    def add_hook_call(self, job_id: int, event: str, environment: dict[str, str]) -> None:
        """Keep a hook call until it has run: a stop or a crash before then loses none."""
        self._db.execute(
            "INSERT INTO hook_calls (job, event, environment, created) VALUES (?, ?, ?, ?)",
            (job_id, event, json.dumps(environment), self._now()),
        )

    def hook_calls(self, limit: int = 100) -> list[tuple[int, int, str, dict[str, str]]]:
        """(call, job, event, environment) of the hook calls not run yet, oldest first."""
        rows = self._db.execute(
            "SELECT id, job, event, environment FROM hook_calls ORDER BY id LIMIT ?", (limit,)
        )
        return [
            (row["id"], row["job"], row["event"], json.loads(row["environment"])) for row in rows
        ]

    def hook_call_done(self, call_id: int) -> None:
        """The call ran (or was given up, and logged): forget it."""
        self._db.execute("DELETE FROM hook_calls WHERE id = ?", (call_id,))

    def listing(self, state: JobState | None = None, limit: int = 50) -> list[Job]:
        """The newest jobs first, optionally in one state."""
        if state is None:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY id DESC LIMIT ?", (state, limit)
            )
        return [_job(row) for row in rows]

    def finished_since(self, since: float) -> tuple[int, float, float]:
        """(recordings, audio seconds, processing seconds) published since `since`."""
        row = self._db.execute(
            "SELECT COUNT(*) AS n, TOTAL(audio_seconds) AS audio,"
            " TOTAL(processing_seconds) AS busy FROM jobs"
            " WHERE finished >= ? AND audio_seconds IS NOT NULL",
            (since,),
        ).fetchone()
        return int(row["n"]), float(row["audio"]), float(row["busy"])

    def finished_jobs(self, since: float) -> list[Job]:
        """The jobs whose transcript was published since `since` (for the backlog's pace)."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE finished >= ? AND audio_seconds IS NOT NULL", (since,)
        )
        return [_job(row) for row in rows]

    def backlog_bytes(self) -> tuple[int, int]:
        """(bytes, recordings) of the jobs waiting to be transcribed or running."""
        row = self._db.execute(
            "SELECT TOTAL(size) AS bytes, COUNT(*) AS n FROM jobs WHERE state IN (?, ?, ?)",
            (JobState.QUEUED, JobState.RUNNING, JobState.CLAIMING),
        ).fetchone()
        return int(row["bytes"]), int(row["n"])

    def last_finished(self) -> Job | None:
        """The job whose transcript was published, or which failed, most recently."""
        row = self._db.execute(
            "SELECT * FROM jobs WHERE finished IS NOT NULL ORDER BY finished DESC LIMIT 1"
        ).fetchone()
        return _job(row) if row else None

    def failures_by_kind(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT COALESCE(failure_kind, 'unknown') AS kind, COUNT(*) AS n FROM jobs"
            " WHERE state = ? GROUP BY kind",
            (JobState.FAILED,),
        )
        return {row["kind"]: row["n"] for row in rows}

    def in_state(self, state: JobState) -> list[Job]:
        rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,))
        return [_job(row) for row in rows]

    def get(self, job_id: int) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def _set(self, job_id: int, state: JobState, **columns: str | float | None) -> None:
        assignments = "".join(f", {name} = ?" for name in columns)
        self._db.execute(
            f"UPDATE jobs SET state = ?, updated = ?{assignments} WHERE id = ?",  # noqa: S608
            (state, self._now(), *columns.values(), job_id),
        )
        faults.point(f"db.{state}")


def is_damaged(error: sqlite3.Error) -> bool:
    """True when SQLite says the file is not a (sound) database, rather than unreachable."""
    return getattr(error, "sqlite_errorcode", None) in (
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    )


_FINISHED = (JobState.DONE, JobState.FAILED)


def _due(table: str = "") -> str:
    """Due: the wait is over, or it is implausibly far away (stored while the clock was wrong).
    Takes the two values of `_due_args`."""
    return f"({table}not_before <= ? OR {table}not_before > ?)"


# Whose turn: a wait stored under a wrong clock sorts as if it had never waited.
_TURN = "CASE WHEN not_before > ? THEN 0 ELSE not_before END"


def _due_args(now: float) -> tuple[float, float]:
    return now, now + LONGEST_WAIT_SECONDS


def _text(value: bytes | str | None) -> str | None:
    """Paths are stored as bytes (they need not be UTF-8) and used as str with surrogates."""
    return os.fsdecode(value) if value is not None else None


def _marks(values: tuple[object, ...]) -> str:
    return ", ".join("?" for _ in values)


def _job(row: sqlite3.Row) -> Job:
    """A row as a Job: columns map to fields by name; these few need converting. A column
    a reader's database lacks keeps the field's default: the page reads the database
    read-only, as the daemon left it, and a daemon not yet restarted after an upgrade has
    not taken the newest schema step."""
    try:
        plain = {name: row[name] for name in _PLAIN_FIELDS}
    except IndexError:  # a column missing: looked up once per row only then
        columns = set(row.keys())
        plain = {name: row[name] for name in _PLAIN_FIELDS if name in columns}
    return Job(
        **plain,
        state=JobState(row["state"]),
        relpath=bytes(row["relpath"]),
        outputs=tuple(json.loads(row["outputs"])) if row["outputs"] else (),
        disposed_to=_text(row["disposed_to"]),
    )


_CONVERTED = {"state", "relpath", "outputs", "disposed_to"}
_PLAIN_FIELDS = tuple(f.name for f in dataclasses.fields(Job) if f.name not in _CONVERTED)
