"""`jobs retry` (and the page's Retry) with real files and a real job database: operator
writes stay inside our folders, and one job is never put back twice (issue "Trust, part 2",
findings 5 and 6)."""

import os
import threading
from pathlib import Path

import pytest

from transcribed.files.content import hash_file
from transcribed.state.overview import OperatorError, retry
from transcribed.state.queue import FailureKind, JobQueue, JobState


def _failed_job(jobs: JobQueue, failed: Path, relpath: str, content: bytes) -> int:
    """A job whose original sits in the failed folder with its reason, as the worker leaves it."""
    quarantined = failed / relpath
    quarantined.parent.mkdir(parents=True, exist_ok=True)
    quarantined.write_bytes(content)
    quarantined.with_name(quarantined.name + ".error.json").write_text('{"error": "junk"}')
    job_id = jobs.begin_claim(relpath.encode(), f"work.{job_count(jobs)}")
    jobs.finish_claim(job_id, hash_file(quarantined))
    assert jobs.next_job() is not None
    jobs.record_disposal_target(job_id, str(quarantined))
    jobs.mark_failed(job_id, "not audio", FailureKind.UNREADABLE)
    return job_id


def job_count(jobs: JobQueue) -> int:
    return sum(jobs.counts().values())


def test_retry_never_follows_a_symlink_planted_in_the_inbox(folders) -> None:
    """Finding 5: `team` replaced by a symlink to another folder: `jobs retry` wrote the file
    there with the service user's rights, deleted the failed copy and its reason, and forgot
    the job."""
    jobs = JobQueue(folders.state / "q.db")
    job_id = _failed_job(jobs, folders.failed, "team/evil.wav", b"chosen by whoever dropped it")
    elsewhere = folders.state.parent / "elsewhere"
    elsewhere.mkdir()
    (folders.inbox / "team").symlink_to(elsewhere)
    with pytest.raises(OperatorError, match="symbolic link"):
        retry(jobs, folders.inbox, job_id)
    assert list(elsewhere.iterdir()) == []
    assert (folders.failed / "team/evil.wav").exists()
    assert (folders.failed / "team/evil.wav.error.json").exists()
    job = jobs.get(job_id)
    assert job.state == JobState.FAILED and job.retry_started is None
    (folders.inbox / "team").unlink()
    assert retry(jobs, folders.inbox, job_id) == folders.inbox / "team/evil.wav"


def test_two_retries_of_one_job_at_once_put_it_back_once(folders) -> None:
    """Finding 6: two retries at once left two hard links in the inbox (refused forever) and
    the second command ended in a KeyError traceback."""
    for pair in range(6):
        jobs = JobQueue(folders.state / "q.db")
        job_id = _failed_job(jobs, folders.failed, f"bad{pair}.wav", os.urandom(1000))
        outcomes: list[object] = []
        barrier = threading.Barrier(2)

        def attempt(
            job_id: int = job_id,
            barrier: threading.Barrier = barrier,
            outcomes: list[object] = outcomes,
        ) -> None:
            own = JobQueue(folders.state / "q.db")
            barrier.wait()
            try:
                outcomes.append(retry(own, folders.inbox, job_id))
            except OperatorError as error:
                outcomes.append(error)

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        placed = [outcome for outcome in outcomes if isinstance(outcome, Path)]
        assert len(placed) == 1, outcomes
        copies = sorted(folders.inbox.glob(f"bad{pair}*"))
        assert copies == placed and os.stat(copies[0]).st_nlink == 1
        assert not (folders.failed / f"bad{pair}.wav").exists()


def test_a_retry_in_flight_is_said_plainly(folders) -> None:
    jobs = JobQueue(folders.state / "q.db")
    job_id = _failed_job(jobs, folders.failed, "bad.wav", b"junk")
    assert jobs.begin_retry(job_id, stale_after=600) is not None  # another command holds it
    with pytest.raises(OperatorError, match="being put back"):
        retry(jobs, folders.inbox, job_id)
    assert list(folders.inbox.iterdir()) == []


def test_retrying_a_number_twice_says_what_it_became(folders) -> None:
    """Issue "The first hour, part 2", finding 7: `jobs retry 33` twice said "no job 33"."""
    jobs = JobQueue(folders.state / "q.db")
    job_id = _failed_job(jobs, folders.failed, "bad.wav", b"junk")
    back = retry(jobs, folders.inbox, job_id)
    with pytest.raises(OperatorError, match="has not been taken yet"):
        retry(jobs, folders.inbox, job_id)
    again = jobs.begin_claim(b"bad.wav", "work.again")
    jobs.finish_claim(again, hash_file(back))
    with pytest.raises(OperatorError, match=f"it is job {again} now \\(queued\\)"):
        retry(jobs, folders.inbox, job_id)
