"""The worker driven step by step with real parts: queue, child decoder, tiny model, outbox."""

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from recordings import write_soundfile
from transcribed.decoder import ChildDecoder
from transcribed.destinations import Destinations
from transcribed.disposal import Disposer
from transcribed.engine import Engine
from transcribed.outbox import Outbox
from transcribed.queue import JobQueue, JobState
from transcribed.rules import Rules
from transcribed.worker import Worker


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=4)


@pytest.fixture
def setup(folders, engine):
    work = folders.inbox / ".transcribed-work"
    work.mkdir()
    jobs = JobQueue(folders.state / "q.db")
    decoder = ChildDecoder(timeout_seconds=60, memory_bytes=4 << 30, max_seconds=3600)
    worker = Worker(
        jobs=jobs,
        work_dir=work,
        decoder=decoder,
        recognizer=engine,
        rules=Rules(
            [], inbox=folders.inbox, language=None, formats=("json", "txt"), disposal="move"
        ),
        destinations=Destinations(
            lambda formats: Outbox(folders.outbox, formats=formats),
            lambda policy: Disposer(jobs, work, policy, folders.archive, folders.failed),
        ),
        chunk_seconds=30,
        max_attempts=3,
        stop=threading.Event(),
    )
    yield worker, jobs, work
    decoder.close()


def _claim(jobs: JobQueue, work: Path, relpath: str, make) -> int:
    job_id = jobs.begin_claim(relpath.encode(), f"{len(list(work.iterdir()))}.flac")
    path = make(work / f"{len(list(work.iterdir()))}.flac")
    jobs.finish_claim(job_id, path.name * 8, path.stat().st_size)
    return job_id


def test_a_long_recording_is_chunked_into_tiling_segments(setup, folders) -> None:
    worker, jobs, work = setup
    job_id = _claim(
        jobs, work, "long/meeting.flac", lambda p: write_soundfile(p, 75, 16000, "PCM_16", "FLAC")
    )
    assert worker.step() is True
    data = json.loads((folders.outbox / "long/meeting.json").read_text())
    segments = data["segments"]
    assert len(segments) >= 3 and segments[0]["start"] == 0 and segments[-1]["end"] == 75
    assert all(0 < s["end"] - s["start"] <= 30 for s in segments)
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(segments))
    assert data["text"] and data["duration"] == 75
    assert jobs.get(job_id).state == JobState.DONE
    assert (folders.archive / "long/meeting.flac").is_file()
    assert worker.step() is False


def test_a_transient_error_waits_with_the_original_untouched(setup, folders, monkeypatch) -> None:
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 2, 16000, "PCM_16", "FLAC"))

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(worker.destinations.outbox(("json", "txt")), "publish", disk_full)
    worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert "No space left" in (job.error or "")
    assert (work / job.work_name).is_file() and list(folders.outbox.iterdir()) == []


def test_a_job_that_keeps_crashing_is_quarantined_after_max_attempts(
    setup, folders, monkeypatch
) -> None:
    worker, jobs, work = setup
    job_id = _claim(
        jobs, work, "poison.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16", "FLAC")
    )

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("model blew up")

    monkeypatch.setattr(worker.recognizer, "transcribe", explode)
    for _ in range(3):
        jobs.requeue(job_id, 0, None, refund=False)  # make it due again at once
        worker.step()
    assert jobs.get(job_id).state == JobState.FAILED
    report = json.loads((folders.failed / "poison.flac.error.json").read_text())
    assert report["attempts"] == 3 and "model blew up" in report["error"]


def test_duplicates_are_disposed_once_the_original_is_published(setup, folders) -> None:
    worker, jobs, work = setup
    first = jobs.begin_claim(b"a.flac", "1.flac")
    write_soundfile(work / "1.flac", 1, 16000, "PCM_16", "FLAC")
    jobs.finish_claim(first, "same", 1)
    second = jobs.begin_claim(b"copy.flac", "2.flac")
    write_soundfile(work / "2.flac", 1, 16000, "PCM_16", "FLAC")
    jobs.finish_claim(second, "same", 1)
    worker.step()
    worker.step()
    assert jobs.get(second).state == JobState.DONE
    assert sorted(p.name for p in folders.outbox.iterdir()) == ["a.json", "a.txt"]
    assert sorted(p.name for p in folders.archive.iterdir()) == ["a.flac", "copy.flac"]


def test_shutdown_requeues_the_current_job_without_counting_it(setup, folders) -> None:
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 2, 16000, "PCM_16", "FLAC"))
    worker.stop.set()
    worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)


def test_a_database_error_puts_back_only_this_workers_job(setup, folders, monkeypatch) -> None:
    """Several workers share the queue: one whose database write fails must requeue its own
    job, not the one another worker is transcribing at that moment."""
    worker, jobs, work = setup
    make = lambda path: write_soundfile(path, 2, 16000, "PCM_16", "FLAC")  # noqa: E731
    elsewhere = _claim(jobs, work, "theirs.flac", make)
    mine = _claim(jobs, work, "mine.flac", make)
    other_worker = JobQueue(folders.state / "q.db").next_job()
    assert other_worker is not None and other_worker.id == elsewhere
    # The database fails to take the transcript, then to take the retry: the error reaches
    # the worker's loop, which backs off and puts the job back.
    for method in ("mark_published", "requeue"):
        monkeypatch.setattr(jobs, method, _fails_once(getattr(jobs, method)))
    worker.retry_seconds = 0.05
    thread = threading.Thread(target=worker.run, kwargs={"idle_wait": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while jobs.get(mine).state != JobState.DONE and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop.set()
        thread.join(30)
    assert jobs.get(mine).state == JobState.DONE and jobs.get(mine).attempts == 1  # refunded
    theirs = jobs.get(elsewhere)
    assert theirs.state == JobState.RUNNING and theirs.attempts == 1  # left to its worker


def _fails_once(method):
    failures = iter([sqlite3.OperationalError("disk I/O error")])

    def wrapped(*args, **kwargs):
        if (error := next(failures, None)) is not None:
            raise error
        return method(*args, **kwargs)

    return wrapped
