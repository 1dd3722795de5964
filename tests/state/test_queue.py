"""The SQLite queue: states, attempts counted at start, dedupe by content, crash recovery."""

import sqlite3
import time
from pathlib import Path

from conftest import hashed
from transcribed.state.overview import status_report
from transcribed.state.queue import FailureKind, JobQueue, JobState


def _queued(jobs: JobQueue, name: bytes, sha: str) -> int:
    job_id = jobs.begin_claim(name, f"{name.hex()}.wav")
    jobs.finish_claim(job_id, hashed(sha, 10))
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


def test_the_same_name_and_content_again_is_a_duplicate_that_adds_nothing(
    tmp_path: Path,
) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"a.wav", "same")
    again = jobs.begin_claim(b"a.wav", "again.wav")
    second = jobs.finish_claim(again, hashed("same", 10))
    assert (second.state, second.duplicate_of) == (JobState.DUPLICATE, first)
    assert jobs.disposals_due() == []
    jobs.mark_published(first, ["/out/a.json"], 2.0, 0.5)
    assert [job.id for job in jobs.disposals_due()] == [first, second.id]


def test_the_same_content_under_another_name_waits_then_reuses_the_result(
    tmp_path: Path,
) -> None:
    """Both names are queued; the one that starts second, while the first is being
    transcribed the same way, waits for it and then finds its published result."""
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"a.wav", "same")
    copy = _queued(jobs, b"copy of a.wav", "same")
    assert jobs.get(copy).state == JobState.QUEUED
    assert jobs.next_job().id == first and jobs.start_request(first, "asked") is None
    assert jobs.next_job().id == copy
    assert jobs.start_request(copy, "asked").id == first  # running: wait for it
    waiting = jobs.get(copy)
    assert (waiting.state, waiting.duplicate_of, waiting.attempts) == ("duplicate", first, 0)
    assert jobs.release_duplicates() == 0 and jobs.disposals_due() == []
    jobs.mark_published(first, ["/out/a.json"], 2.0, 0.5)
    assert jobs.release_duplicates() == 1
    assert [job.id for job in jobs.disposals_due()] == [first]
    assert jobs.next_job().id == copy
    twin = jobs.start_request(copy, "asked")
    assert (twin.id, twin.state, twin.outputs) == (first, "published", ("/out/a.json",))


def test_the_same_content_asked_differently_is_transcribed_again(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"zh/a.wav", "same")
    copy = _queued(jobs, b"en/a.wav", "same")
    jobs.next_job()
    jobs.start_request(first, "forced zh")
    jobs.next_job()
    assert jobs.start_request(copy, "forced en") is None
    assert jobs.get(copy).state == JobState.RUNNING


def test_a_failed_disposal_waits_for_its_retry_time(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"a.wav", "aa")
    jobs.mark_published(job_id, ["/out/a.json"], 2.0, 0.5)
    jobs.defer_disposal(job_id, 300, "archive full")
    assert jobs.disposals_due() == []
    assert jobs.get(job_id).disposal_failures == 1
    jobs.defer_disposal(job_id, -1, "archive full")
    assert [job.id for job in jobs.disposals_due()] == [job_id]


def test_duplicates_of_a_failed_job_get_their_own_chance(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    first = _queued(jobs, b"a.wav", "same")
    second = jobs.finish_claim(jobs.begin_claim(b"a.wav", "2.wav"), hashed("same", 10)).id
    jobs.mark_failed(first, "corrupt", FailureKind.UNREADABLE)
    assert jobs.release_duplicates() == 1
    assert jobs.get(second).state == JobState.QUEUED


def test_requeue_delays_and_refunds(tmp_path: Path) -> None:
    jobs = JobQueue(tmp_path / "q.db")
    job_id = _queued(jobs, b"a.wav", "x")
    assert jobs.next_job() is not None
    jobs.requeue(job_id, 300, "disk full", refund=True, transient=True)
    assert jobs.next_job() is None  # not due yet
    job = jobs.get(job_id)
    assert (job.attempts, job.error, job.transient_failures) == (0, "disk full", 1)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_wait_stored_under_a_clock_far_ahead_is_due_once_the_clock_is_corrected(
    tmp_path: Path,
) -> None:
    """Finding 9: a clock 400 days fast stores retries and disposals 400 days out; once the
    clock is corrected they must not wait that long."""
    clock = _Clock(time.time() + 400 * 86400)
    jobs = JobQueue(tmp_path / "q.db", clock=clock)
    retried = _queued(jobs, b"a.wav", "a")
    jobs.next_job()
    jobs.requeue(retried, 30, "disk full", refund=True, transient=True)
    disposed = _queued(jobs, b"b.wav", "b")
    jobs.mark_published(disposed, ["/out/b.json"], 1.0, 0.1)
    jobs.defer_disposal(disposed, 30, "archive full")
    clock.now = time.time()  # corrected
    assert [job.id for job in jobs.disposals_due()] == [disposed]
    assert jobs.next_job().id == retried


def test_a_job_that_failed_goes_behind_the_jobs_waiting(tmp_path: Path) -> None:
    clock = _Clock(1000.0)
    jobs = JobQueue(tmp_path / "q.db", clock=clock)
    first = _queued(jobs, b"a.wav", "a")
    later = _queued(jobs, b"b.wav", "b")
    jobs.next_job()
    clock.now += 1
    jobs.requeue(first, 0, "boom", refund=False)
    assert [job.id for job in iter(jobs.next_job, None)] == [later, first]


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


def test_a_same_name_duplicate_waiting_for_disposal_is_not_counted_as_queued(tmp_path) -> None:
    """Found by the adversary (Trust 2): with the archive immutable, the same recording dropped
    again was counted as "1 queued" while `queued` listed nothing; it only waited, like the
    first drop, to be archived."""
    jobs = JobQueue(tmp_path / "q.db")
    first = jobs.begin_claim(b"st1.opus", "1.st1.opus")
    jobs.finish_claim(first, hashed("a" * 64, 10))
    assert jobs.next_job() is not None
    jobs.mark_published(first, ["/out/st1.json"], 2.0, 1.0, disposal="move")
    again = jobs.finish_claim(jobs.begin_claim(b"st1.opus", "2.st1.opus"), hashed("a" * 64, 10))
    assert again.state == JobState.DUPLICATE
    report = status_report(jobs)
    assert report["summary"] == "0 queued, 0 running, 0 done, 0 failed, 2 waiting for disposal"
    assert report["disposal"]["waiting"] == 2 and report["queued"] == []
