"""The job database's schema, as numbered steps.

`PRAGMA user_version` holds how many steps a database has taken. Opening it for writing
(`upgrade`) takes the steps it lacks, each in one transaction with the version it reaches, so
a crash mid-way leaves the database at a known step and the next start goes on from there.
A fresh database takes every step: the steps are the schema, written in one place.

To change the schema, add a step at the end. Never edit a step that has shipped: databases
out there have taken it, and would not take it again.
"""

import sqlite3
from collections.abc import Callable, Sequence

from transcribed.errors import ConfigError

# The job table as the first release made it; every later column is a step's (or, before the
# versions began, `_COLUMNS_BEFORE_VERSIONS`).
_FIRST_TABLES = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id           INTEGER PRIMARY KEY,
        state        TEXT    NOT NULL,
        relpath      BLOB    NOT NULL,  -- path below the inbox, raw bytes: names need not be UTF-8
        work_name    TEXT    NOT NULL UNIQUE,
        sha256       TEXT,
        size         INTEGER,
        duplicate_of INTEGER REFERENCES jobs(id),
        attempts     INTEGER NOT NULL DEFAULT 0,
        not_before   REAL    NOT NULL DEFAULT 0,
        error        TEXT,
        outputs      TEXT,
        disposed_to  BLOB,  -- bytes, like relpath
        created      REAL    NOT NULL,
        updated      REAL    NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_sha ON jobs(sha256)",
    # Inbox files not taken yet, and why (incomplete, stalled, cannot be claimed): for `status`.
    """CREATE TABLE IF NOT EXISTS waiting (
        relpath BLOB PRIMARY KEY,
        reason  TEXT NOT NULL,
        since   REAL NOT NULL
    )""",
    # on_done / on_failed calls not run yet: kept with the job so a stop or a crash loses none.
    """CREATE TABLE IF NOT EXISTS hook_calls (
        id          INTEGER PRIMARY KEY,
        job         INTEGER NOT NULL,
        event       TEXT    NOT NULL,
        environment TEXT    NOT NULL,  -- JSON: what the hook learns (paths and figures, no text)
        created     REAL    NOT NULL
    )""",
    # Failed jobs put back into the inbox by `jobs retry`: which name and content each became,
    # so a second `jobs retry` of the old number can say where the recording is now.
    """CREATE TABLE IF NOT EXISTS retried (
        job     INTEGER PRIMARY KEY,
        relpath BLOB NOT NULL,
        sha256  TEXT,
        at      REAL NOT NULL
    )""",
)

# Columns added to the job table by releases before the versions began: a database they
# wrote has some of them, in no order a version number could tell.
_COLUMNS_BEFORE_VERSIONS = {
    "disposal_failures": "INTEGER NOT NULL DEFAULT 0",
    "failure_kind": "TEXT",  # failed jobs: unreadable | gave_up | kills_daemon (for metrics)
    "started": "REAL",  # the current or last attempt began (wall clock)
    "finished": "REAL",  # the transcript was published, or the job failed
    "audio_seconds": "REAL",  # published: the recording's length
    "processing_seconds": "REAL",  # published: wall time from start to published transcript
    "progress_seconds": "REAL",  # running: audio transcribed so far
    "expected_seconds": "REAL",  # running: length the file's header claims (for an ETA only)
    # What the model is asked (model, forced language, context), as a key: the model runs once
    # per content and request; another name with the same content reuses the result.
    "request": "TEXT",
    # Consecutive transient failures (disk full, I/O errors): they do not count as attempts
    # (not the file's fault) but double the wait each time.
    "transient_failures": "INTEGER NOT NULL DEFAULT 0",
    # Set when the file was taken although it never finished (a recorder that crashed): why.
    "incomplete": "TEXT",
    # When an irreversible disposal step began (link, unlink, overwrite): from then on a
    # missing work file may be our own doing, which the disposer verifies.
    "disposal_started": "REAL",
    "progress_at": "REAL",  # running: when progress was last written (a stalled job shows)
    "language": "TEXT",  # published: the main language (ISO code), for `jobs list`
    # The work file's fingerprint when it was hashed (size is the column above): compared
    # before publishing and before disposing, so bytes a paused writer added later are seen.
    "mtime_ns": "INTEGER",
    "ctime_ns": "INTEGER",
    # Times the recording was found changed after it was taken (and transcribed again).
    "versions": "INTEGER NOT NULL DEFAULT 0",
    # The disposal policy its transcript records: the one the original is disposed of by.
    "disposal": "TEXT",
    # `jobs retry` has begun putting this failed job back (a second retry waits for it).
    "retry_started": "REAL",
    # Why the job is being failed, recorded before its original is moved to the failed folder:
    # a crash between the move and `mark_failed` must not turn it into "vanished".
    "failure_reason": "TEXT",
}


def _before_versions(db: sqlite3.Connection) -> None:
    """Step 1: the schema as it stood when the versions began, from nothing or from any
    database an earlier release wrote (version 0 either way)."""
    for statement in _FIRST_TABLES:
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for name, definition in _COLUMNS_BEFORE_VERSIONS.items():
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
    # The STATUS line and `transcribed status` read recent finishes every few seconds, which
    # would otherwise scan every job ever done.
    db.execute("CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs(finished)")


def _progress_next_and_boot_clock(db: sqlite3.Connection) -> None:
    """Step 2. `progress_next_seconds`: where a running job's next model answer reaches at
    least (`StreamProgress`): the progress `status` estimates between answers moves toward
    it, never past it. `claimed_boot`, `claimed_uptime`: when the job was claimed on the boot
    clock (`boot_clock`), which a step of the wall clock does not move: the hold of a file
    whose writers cannot be seen is not cut short by NTP setting the time forward."""
    db.execute("ALTER TABLE jobs ADD COLUMN progress_next_seconds REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN claimed_boot TEXT")
    db.execute("ALTER TABLE jobs ADD COLUMN claimed_uptime REAL")


Step = Callable[[sqlite3.Connection], None]

# Step N takes a database from version N-1 to N.
STEPS: Sequence[Step] = (_before_versions, _progress_next_and_boot_clock)
LATEST = len(STEPS)


def version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def upgrade(db: sqlite3.Connection, steps: Sequence[Step] = STEPS) -> None:
    """Take the steps `db` (in autocommit mode) has not taken. Several connections may open a
    database at once: each step's version is read again inside its transaction."""
    if version(db) == len(steps):
        return
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            taken = version(db)
            _refuse_newer(taken, len(steps))
            if taken == len(steps):
                db.execute("COMMIT")
                return
            steps[taken](db)
            db.execute(f"PRAGMA user_version = {taken + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _refuse_newer(taken: int, known: int) -> None:
    """A database a newer release wrote holds columns this one does not know to keep."""
    if taken > known:
        raise ConfigError(
            f"the job database is at schema version {taken}, written by a newer transcribed "
            f"(this one knows up to {known}): run that release again, or stop the daemon and "
            "run `transcribed recover` to rebuild the database from the disk"
        )
