"""The job database's schema versions: `PRAGMA user_version` and numbered steps
(state/schema.py). A database an older release wrote is upgraded in place and keeps its jobs."""

import sqlite3
from pathlib import Path

import pytest

from transcribed.errors import ConfigError
from transcribed.state import schema
from transcribed.state.queue import JobQueue, JobState

FROM_MAIN = Path(__file__).parent / "data" / "jobs_from_main_19f8a18.sql"


def _columns(database: Path) -> dict[str, tuple[str, int, object]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("PRAGMA table_info(jobs)").fetchall()
    return {name: (kind, not_null, default) for _, name, kind, not_null, default, _ in rows}


def _version(database: Path) -> int:
    with sqlite3.connect(database) as db:
        return schema.version(db)


def _objects(database: Path) -> set[tuple[str, str]]:
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return set(rows.fetchall())


def test_a_fresh_database_takes_every_step(tmp_path: Path) -> None:
    JobQueue(tmp_path / "fresh.db").close()
    assert _version(tmp_path / "fresh.db") == schema.LATEST >= 1


def test_a_database_main_wrote_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    """The upgrade of a real pre-versions database (made by main's own JobQueue) gives the
    same schema a fresh database has, with every job, wait and hook call kept and usable."""
    database = tmp_path / "jobs.db"
    with sqlite3.connect(database) as db:
        db.executescript(FROM_MAIN.read_text())
    assert _version(database) == 0
    JobQueue(tmp_path / "fresh.db").close()

    jobs = JobQueue(database)
    assert _version(database) == schema.LATEST
    assert _columns(database) == _columns(tmp_path / "fresh.db")
    assert _objects(database) == _objects(tmp_path / "fresh.db")
    assert jobs.counts() == {"done": 1, "failed": 1, "queued": 1}
    done = jobs.get(1)
    assert (done.state, done.relpath, done.outputs) == (
        JobState.DONE,
        b"team/done.wav",
        ("team/done.txt", "team/done.json"),
    )
    assert (done.audio_seconds, done.language, done.disposal) == (61.5, "en", "move")
    assert jobs.get(2).error == "not audio"
    assert jobs.waiting() == [(b"team/still-writing.wav", "incomplete", 1_700_000_000.0)]
    assert [call[2] for call in jobs.hook_calls()] == ["failed"]
    queued = jobs.next_job()  # work goes on where main left it
    assert queued is not None and queued.relpath == b"team/queued.wav" and queued.attempts == 1


def test_a_database_from_the_first_release_gains_every_later_column(tmp_path: Path) -> None:
    """Releases before the versions added columns one by one: a database with none of them
    is brought to the same schema (the step adds what is missing, whatever that is)."""
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as db:
        db.executescript(";\n".join(schema._FIRST_TABLES))
        db.execute(
            "INSERT INTO jobs (state, relpath, work_name, created, updated)"
            " VALUES ('queued', x'612e776176', 'w-a.wav', 1, 1)"
        )
    assert set(schema._COLUMNS_BEFORE_VERSIONS).isdisjoint(_columns(database))
    JobQueue(tmp_path / "fresh.db").close()
    jobs = JobQueue(database)
    assert _columns(database) == _columns(tmp_path / "fresh.db")
    job = jobs.get(1)
    assert (job.relpath, job.versions, job.transient_failures) == (b"a.wav", 0, 0)


def test_each_step_is_taken_once_and_a_failed_step_keeps_the_version_before(
    tmp_path: Path,
) -> None:
    """A step that fails (a crash, a full disk) leaves the database at the step before it,
    with none of its changes; the next opening takes it again, and no step is taken twice."""
    taken: list[int] = []
    fail = [True]

    def step(number: int) -> schema.Step:
        def run(db: sqlite3.Connection) -> None:
            db.execute(f"CREATE TABLE t{number} (x)")
            if number == 2 and fail[0]:
                raise sqlite3.OperationalError("disk I/O error")
            taken.append(number)

        return run

    steps = [step(1), step(2), step(3)]
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        schema.upgrade(db, steps)
    assert (schema.version(db), taken) == (1, [1])
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 't2'").fetchone() is None
    fail[0] = False
    schema.upgrade(db, steps)
    schema.upgrade(db, steps)
    assert (schema.version(db), taken) == (3, [1, 2, 3])
    db.close()


def test_a_database_from_a_newer_release_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """Its columns would be ignored or dropped by this release: one line, no upgrade down."""
    database = tmp_path / "newer.db"
    JobQueue(database).close()
    with sqlite3.connect(database) as db:
        db.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    with pytest.raises(ConfigError, match=r"newer transcribed.*transcribed recover"):
        JobQueue(database)
    assert _version(database) == schema.LATEST + 1


def test_a_reader_of_a_database_one_step_behind_reads_its_jobs(tmp_path: Path) -> None:
    """The page reads the database read-only, as the daemon left it: after an upgrade, a
    daemon not yet restarted has not taken the newest step, and the columns it adds are
    missing. The jobs read with those fields at their defaults, instead of failing."""
    database = tmp_path / "jobs.db"
    db = sqlite3.connect(database, isolation_level=None)
    schema.upgrade(db, schema.STEPS[:1])
    db.execute(
        "INSERT INTO jobs (state, relpath, work_name, created, updated)"
        " VALUES ('queued', x'612e776176', 'w-a.wav', 1, 1)"
    )
    db.close()
    reader = JobQueue(database, read_only=True)
    assert _version(database) == 1 < schema.LATEST
    job = reader.get(1)
    assert (job.relpath, job.progress_next_seconds, job.claimed_boot) == (b"a.wav", None, None)
    assert [queued.id for queued in reader.in_state(JobState.QUEUED)] == [1]
