"""The SQLite queue: states, attempts counted at start, dedupe by content, crash recovery."""

import sqlite3
from pathlib import Path

from transcribed.queue import FailureKind, JobQueue, JobState


def _queued(jobs: JobQueue, name: bytes, sha: str) -> int:
    job_id = jobs.begin_claim(name, f"{name.hex()}.wav")
    jobs.finish_claim(job_id, sha, 10)
    return job_id


def test_database_is_wal_with_full_sync(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    assert jobs._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert jobs._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_attempt_is_counted_when_a_job_starts_and_survives_a_crash(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"a.wav", "aa")
    started = jobs.next_job()
    assert started is not None and (started.id, started.attempts) == (job_id, 1)
    jobs.close()  # the process dies mid-job

    after_restart = JobQueue(tmp_path / "q.db")
    assert after_restart.get(job_id).state == JobState.RUNNING
    assert after_restart.recover_running(refund=False) == 1
    again = after_restart.next_job()
    assert again is not None and again.attempts == 2


def test_same_content_is_a_duplicate_of_the_live_job(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"a.wav", "same")
    second = jobs.get(_queued(jobs, b"copy of a.wav", "same"))
    assert (second.state, second.duplicate_of) == (JobState.DUPLICATE, first)
    assert jobs.disposals_due() == []
    jobs.mark_published(first, ["/out/a.json"], 2.0, 0.5)
    assert [job.id for job in jobs.disposals_due()] == [first, second.id]


def test_a_failed_disposal_waits_for_its_retry_time(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"a.wav", "aa")
    jobs.mark_published(job_id, ["/out/a.json"], 2.0, 0.5)
    jobs.defer_disposal(job_id, 3600, "archive full")
    assert jobs.disposals_due() == []
    assert jobs.get(job_id).disposal_failures == 1
    jobs.defer_disposal(job_id, -1, "archive full")
    assert [job.id for job in jobs.disposals_due()] == [job_id]


def test_duplicates_of_a_failed_job_get_their_own_chance(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"a.wav", "same")
    second = _queued(jobs, b"b.wav", "same")
    jobs.mark_failed(first, "corrupt", FailureKind.UNREADABLE)
    assert jobs.orphan_duplicates() == 1
    assert jobs.get(second).state == JobState.QUEUED


def test_requeue_delays_and_refunds(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"a.wav", "x")
    assert jobs.next_job() is not None
    jobs.requeue(job_id, 3600, "disk full", refund=True)
    assert jobs.next_job() is None  # not due yet
    job = jobs.get(job_id)
    assert (job.attempts, job.error) == (0, "disk full")


def test_names_that_are_not_utf8_are_stored_exactly(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"bad\xff\nname.wav", "x")
    assert jobs.get(job_id).relpath == b"bad\xff\nname.wav"


def test_jobs_are_started_in_arrival_order(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    ids = [_queued(jobs, f"{n}.wav".encode(), str(n)) for n in range(5)]
    started = [job.id for job in iter(jobs.next_job, None)]
    assert started == ids


def test_an_unfinished_claim_is_visible_for_recovery(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = jobs.begin_claim(b"a.wav", "w.wav")
    assert [job.id for job in jobs.in_state(JobState.CLAIMING)] == [job_id]
    jobs.abandon_claim(job_id)
    assert sqlite3.connect(tmp_path / "q.db").execute("SELECT COUNT(*) FROM jobs").fetchone() == (
        0,
    )
