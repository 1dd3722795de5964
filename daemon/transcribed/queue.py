"""The durable job queue: one SQLite row per file dropped into the inbox.

States and what each guarantees:
  claiming  -> the file is being renamed out of the inbox; after a crash, `recover_claims`
               finishes the claim (work file present) or forgets it (file never moved).
  queued    -> the original sits in the work folder, waiting (not before `not_before`).
  running   -> an attempt has started; the attempt was counted in the same transaction,
               so a file that kills the daemon is eventually quarantined, not retried forever.
  published -> its transcript is durable in the outbox; only disposal is left.
  duplicate -> same content as job `duplicate_of`; disposed once that one is published.
  done      -> transcript durable and original disposed.
  failed    -> permanently failed; the original is in failed_dir with a reason file.
"""

import dataclasses
import enum
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transcribed import faults

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id           INTEGER PRIMARY KEY,
    state        TEXT    NOT NULL,
    relpath      BLOB    NOT NULL,  -- path below the inbox as raw bytes: names need not be UTF-8
    work_name    TEXT    NOT NULL UNIQUE,
    sha256       TEXT,
    size         INTEGER,
    duplicate_of INTEGER REFERENCES jobs(id),
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL    NOT NULL DEFAULT 0,
    error        TEXT,
    outputs      TEXT,
    disposed_to  BLOB,  -- bytes, like relpath
    disposal_failures INTEGER NOT NULL DEFAULT 0,
    failure_kind TEXT,  -- failed jobs: unreadable | gave_up | kills_daemon (for metrics)
    started      REAL,  -- the current or last attempt began (wall clock)
    finished     REAL,  -- the transcript was published, or the job failed
    audio_seconds      REAL,  -- published: the recording's length
    processing_seconds REAL,  -- published: wall time from start to published transcript
    progress_seconds   REAL,  -- running: audio transcribed so far
    expected_seconds   REAL,  -- running: length the file's header claims (for an ETA only)
    created      REAL    NOT NULL,
    updated      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_by_sha ON jobs(sha256);
"""


# Columns added after the first release, with their definitions, for `_migrate`.
_ADDED_COLUMNS = {
    "disposal_failures": "INTEGER NOT NULL DEFAULT 0",
    "failure_kind": "TEXT",
    "started": "REAL",
    "finished": "REAL",
    "audio_seconds": "REAL",
    "processing_seconds": "REAL",
    "progress_seconds": "REAL",
    "expected_seconds": "REAL",
}


class FailureKind(enum.StrEnum):
    UNREADABLE = "unreadable"  # not usable audio: failed at once
    GAVE_UP = "gave_up"  # crashed, hung or errored on every attempt
    KILLS_DAEMON = "kills_daemon"  # the daemon died during every attempt


class JobState(enum.StrEnum):
    CLAIMING = "claiming"
    QUEUED = "queued"
    RUNNING = "running"
    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    DONE = "done"
    FAILED = "failed"


# States whose content is, or will be, transcribed: a new copy of that content is a duplicate.
_LIVE = (JobState.QUEUED, JobState.RUNNING, JobState.PUBLISHED, JobState.DONE)


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
    updated: float = 0.0


class JobQueue:
    """One connection. Use each JobQueue from one thread at a time (it may be created in another
    and handed over); every method commits before it returns."""

    def __init__(self, database: Path, *, read_only: bool = False) -> None:
        """`read_only`: a reader beside the daemon (the page): SQLite refuses every write, and
        the schema is taken as the daemon left it."""
        target = f"{database.absolute().as_uri()}?mode=ro" if read_only else str(database)
        self._db = sqlite3.connect(
            target, isolation_level=None, timeout=30, check_same_thread=False, uri=read_only
        )
        self._db.row_factory = sqlite3.Row
        self._now = time.time
        if read_only:
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL defaults to NORMAL, which can lose the last commits on power loss; we promise more.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database written by an older version up to this schema."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, definition in _ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
        # After the columns exist: the STATUS line and `transcribed status` read recent
        # finishes every few seconds, which would otherwise scan every job ever done.
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs(finished)")

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

    def begin_claim(self, relpath: bytes, work_name: str) -> int:
        """Record the intent to move `relpath` to `work_name` before the rename happens."""
        now = self._now()
        cursor = self._db.execute(
            "INSERT INTO jobs (state, relpath, work_name, created, updated) VALUES (?, ?, ?, ?, ?)",
            (JobState.CLAIMING, relpath, work_name, now, now),
        )
        assert cursor.lastrowid is not None
        faults.point("db.claiming")
        return cursor.lastrowid

    def finish_claim(self, job_id: int, sha256: str, size: int) -> Job:
        """The file is in the work folder: queue it, or mark it a duplicate of a live job."""
        with self._transaction() as db:
            original = db.execute(
                # Only "?" placeholders are interpolated into the statement.
                f"SELECT id FROM jobs WHERE sha256 = ? AND id != ? AND state IN ({_marks(_LIVE)})"  # noqa: S608
                " ORDER BY id LIMIT 1",
                (sha256, job_id, *_LIVE),
            ).fetchone()
            state = JobState.DUPLICATE if original else JobState.QUEUED
            db.execute(
                "UPDATE jobs SET state = ?, sha256 = ?, size = ?, duplicate_of = ?, updated = ?"
                " WHERE id = ?",
                (state, sha256, size, original["id"] if original else None, self._now(), job_id),
            )
        faults.point(f"db.{state}")
        return self.get(job_id)

    def abandon_claim(self, job_id: int) -> None:
        """The rename never happened: forget the intent."""
        self._db.execute("DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, JobState.CLAIMING))

    def next_job(self) -> Job | None:
        """Start the oldest due queued job: it becomes running and its attempt is counted, in
        one committed transaction before any work starts."""
        with self._transaction() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, updated = ?, started = ?,"
                " progress_seconds = 0, expected_seconds = NULL"
                " WHERE id = (SELECT id FROM jobs WHERE state = ? AND not_before <= ?"
                "             ORDER BY id LIMIT 1)"
                " RETURNING *",
                (JobState.RUNNING, self._now(), self._now(), JobState.QUEUED, self._now()),
            ).fetchall()  # all rows read: the statement is finished before COMMIT
        if not rows:
            return None
        faults.point("db.running", os.fsdecode(bytes(rows[0]["relpath"])))
        return _job(rows[0])

    def mark_published(
        self, job_id: int, outputs: list[str], audio_seconds: float, processing_seconds: float
    ) -> None:
        """The transcript files are durable; disposal of the original may start."""
        self._set(
            job_id,
            JobState.PUBLISHED,
            outputs=json.dumps(outputs),
            error=None,
            audio_seconds=audio_seconds,
            processing_seconds=processing_seconds,
            finished=self._now(),
        )

    def record_progress(self, job_id: int, done: float, expected: float | None) -> None:
        """Audio seconds transcribed so far, for `transcribed status`; not a durable step."""
        self._db.execute(
            "UPDATE jobs SET progress_seconds = ?, expected_seconds = ? WHERE id = ?",
            (done, expected, job_id),
        )

    def record_disposal_target(self, job_id: int, target: str) -> None:
        """Remember where the original is being moved, so a retry after a crash reuses it."""
        self._db.execute(
            "UPDATE jobs SET disposed_to = ?, updated = ? WHERE id = ?",
            (os.fsencode(target), self._now(), job_id),  # bytes: names need not be UTF-8
        )
        faults.point("db.disposal_target")

    def mark_done(self, job_id: int) -> None:
        """The original has been disposed of; nothing is left to do for this file."""
        self._set(job_id, JobState.DONE)

    def mark_failed(self, job_id: int, error: str, kind: FailureKind) -> None:
        """Permanently failed; the original has been moved to failed_dir."""
        self._set(job_id, JobState.FAILED, error=error, failure_kind=kind, finished=self._now())

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

    def requeue(self, job_id: int, delay: float, error: str | None, *, refund: bool) -> None:
        """Back to the queue after `delay` seconds; `refund` un-counts an attempt that was not
        the file's fault (shutdown, out of memory, disk full)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, not_before = ?, error = ?, updated = ?,"
            " attempts = attempts - ? WHERE id = ?",
            (JobState.QUEUED, self._now() + delay, error, self._now(), int(refund), job_id),
        )

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

    def defer_disposal(self, job_id: int, delay: float, error: str) -> None:
        """Disposal failed (archive full, unwritable…): try again after `delay` seconds."""
        self._db.execute(
            "UPDATE jobs SET not_before = ?, error = ?, disposal_failures = disposal_failures + 1,"
            " updated = ? WHERE id = ?",
            (self._now() + delay, error, self._now(), job_id),
        )

    def in_state(self, state: JobState) -> list[Job]:
        rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,))
        return [_job(row) for row in rows]

    def disposals_due(self) -> list[Job]:
        """Originals that may be disposed of now: their own transcript is durable (published),
        or they duplicate one whose transcript is; minus those waiting after a failure."""
        rows = self._db.execute(
            "SELECT j.* FROM jobs j LEFT JOIN jobs o ON o.id = j.duplicate_of"
            " WHERE j.not_before <= ? AND (j.state = ?"
            "   OR (j.state = ? AND o.state IN (?, ?)))"
            " ORDER BY j.id",
            (
                self._now(),
                JobState.PUBLISHED,
                JobState.DUPLICATE,
                JobState.PUBLISHED,
                JobState.DONE,
            ),
        )
        return [_job(row) for row in rows]

    def orphan_duplicates(self) -> int:
        """Duplicates whose original failed get a chance of their own."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = ?, duplicate_of = NULL, updated = ?"
            " WHERE state = ? AND duplicate_of IN (SELECT id FROM jobs WHERE state = ?)",
            (JobState.QUEUED, self._now(), JobState.DUPLICATE, JobState.FAILED),
        )
        return cursor.rowcount

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


def _text(value: bytes | str | None) -> str | None:
    """Paths are stored as bytes (they need not be UTF-8) and used as str with surrogates."""
    return os.fsdecode(value) if value is not None else None


def _marks(values: tuple[object, ...]) -> str:
    return ", ".join("?" for _ in values)


def _job(row: sqlite3.Row) -> Job:
    """A row as a Job: columns map to fields by name; these few need converting."""
    plain = {name: row[name] for name in _PLAIN_FIELDS}
    return Job(
        **plain,
        state=JobState(row["state"]),
        relpath=bytes(row["relpath"]),
        outputs=tuple(json.loads(row["outputs"])) if row["outputs"] else (),
        disposed_to=_text(row["disposed_to"]),
    )


_CONVERTED = {"state", "relpath", "outputs", "disposed_to"}
_PLAIN_FIELDS = tuple(f.name for f in dataclasses.fields(Job) if f.name not in _CONVERTED)
