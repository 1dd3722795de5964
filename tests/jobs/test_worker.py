"""The worker driven step by step with real parts: queue, child decoder, tiny model, outbox;
the disposal loop beside it, as in the daemon, disposes of what the worker published."""

import itertools
import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from support.recordings import write_soundfile
from support.supervised import supervised
from transcribed.audio.decoder import ChildDecoder
from transcribed.disposal.disposer import Disposer
from transcribed.errors import PermanentError
from transcribed.files.content import hash_file
from transcribed.jobs.destinations import Destinations
from transcribed.jobs.disposals import Disposals
from transcribed.jobs.rules import Rules
from transcribed.jobs.worker import Worker
from transcribed.model.engine import Engine
from transcribed.output.outbox import Outbox
from transcribed.output.search_index import SearchIndex
from transcribed.state.queue import JobQueue, JobState


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=4)


@pytest.fixture
def setup(folders, engine, work):
    jobs = JobQueue(folders.state / "q.db")
    decoder = ChildDecoder(timeout_seconds=60, memory_bytes=4 << 30, max_seconds=3600)
    worker = Worker(
        jobs=jobs,
        work=work,
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
    yield worker, jobs, work.path
    decoder.close()


@pytest.fixture
def disposals(setup, folders, work) -> Disposals:
    """The disposal loop for `setup`'s worker, on its own connection as in the daemon."""
    worker, _, _ = setup
    jobs = JobQueue(folders.state / "q.db")
    return Disposals(
        jobs=jobs,
        work=work,
        rules=worker.rules,
        destinations=Destinations(
            lambda formats: Outbox(folders.outbox, formats=formats),
            lambda policy: Disposer(jobs, work, policy, folders.archive, folders.failed),
        ),
        max_attempts=worker.max_attempts,
    )


def _claim(jobs: JobQueue, work: Path, relpath: str, make) -> int:
    name = f"{len(list(work.iterdir()))}.flac"
    job_id = jobs.begin_claim(relpath.encode(), name)
    path = make(work / name)
    jobs.finish_claim(job_id, hash_file(path))
    return job_id


def test_a_long_recording_is_chunked_into_tiling_segments(setup, disposals, folders) -> None:
    worker, jobs, work = setup
    job_id = _claim(
        jobs, work, "long/meeting.flac", lambda p: write_soundfile(p, 75, 16000, "PCM_16", "FLAC")
    )
    assert worker.step() is True
    assert jobs.get(job_id).state == JobState.PUBLISHED  # its original: the disposal loop's
    assert disposals.step() is True
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


def test_the_same_content_under_another_name_gets_its_own_transcript_from_one_model_run(
    setup, disposals, folders, monkeypatch
) -> None:
    """Finding 13 (I2): `notes (copy).wav` beside `notes.wav` gets a transcript named after
    it, published from the stored result; the model runs once."""
    worker, jobs, work = setup
    make = lambda path: write_soundfile(path, 2, 16000, "PCM_16", "FLAC")  # noqa: E731
    first = _claim(jobs, work, "notes.flac", make)
    copy = _claim(jobs, work, "notes (copy).flac", make)
    calls = []
    real = worker.recognizer.transcribe
    monkeypatch.setattr(
        worker.recognizer, "transcribe", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert worker.step() and worker.step() and disposals.step()
    assert len(calls) == 1, "the model ran for each name"
    assert (jobs.get(first).state, jobs.get(copy).state) == (JobState.DONE, JobState.DONE)
    original = json.loads((folders.outbox / "notes.json").read_text())
    published = json.loads((folders.outbox / "notes (copy).json").read_text())
    assert published["source"]["name"] == "notes (copy).flac"
    assert published["reused_from"] == "notes.flac"
    assert published["text"] == original["text"] and published["segments"] == original["segments"]
    assert (folders.outbox / "notes (copy).txt").read_text() == (
        folders.outbox / "notes.txt"
    ).read_text()
    assert sorted(p.name for p in folders.archive.iterdir()) == [
        "notes (copy).flac",
        "notes.flac",
    ]


def test_shutdown_requeues_the_current_job_without_counting_it(setup, folders) -> None:
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 2, 16000, "PCM_16", "FLAC"))
    worker.stop.set()
    worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)


def test_a_database_error_puts_back_only_this_workers_job(
    setup, disposals, folders, monkeypatch
) -> None:
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
    _run_until_done(worker, disposals, jobs, mine)
    assert jobs.get(mine).state == JobState.DONE and jobs.get(mine).attempts == 1  # refunded
    theirs = jobs.get(elsewhere)
    assert theirs.state == JobState.RUNNING and theirs.attempts == 1  # left to its worker


def _run_until_done(worker, disposals, jobs: JobQueue, job_id: int) -> None:
    """The worker's and the disposal thread's loops, supervised, until the job is done (60 s
    at most), retrying after a failed turn at once."""
    worker.retry_seconds = 0.05
    loops = worker.loop("worker-0", 0.05, 3600), disposals.loop(0.05, 3600)
    with supervised(*loops, stop=worker.stop):
        deadline = time.monotonic() + 60
        while jobs.get(job_id).state != JobState.DONE and time.monotonic() < deadline:
            time.sleep(0.05)


def _fails_once(method, times: int = 1):
    failures = iter([sqlite3.OperationalError("disk I/O error")] * times)

    def wrapped(*args, **kwargs):
        if (error := next(failures, None)) is not None:
            raise error
        return method(*args, **kwargs)

    return wrapped


def test_a_put_back_that_could_not_be_written_is_tried_again_until_it_is(
    setup, disposals, folders, monkeypatch
) -> None:
    """Found by the adversary: with the state disk full, the put-back of a job cut short
    failed once and was never tried again: the job stayed "running" for good, and the
    worker's heartbeat hid it. Now it is owed, and tried before anything else each turn."""
    worker, jobs, work = setup
    make = lambda path: write_soundfile(path, 2, 16000, "PCM_16", "FLAC")  # noqa: E731
    mine = _claim(jobs, work, "mine.flac", make)
    monkeypatch.setattr(jobs, "mark_published", _fails_once(jobs.mark_published))
    monkeypatch.setattr(jobs, "requeue", _fails_once(jobs.requeue))
    monkeypatch.setattr(jobs, "recover_running", _fails_once(jobs.recover_running, times=3))
    _run_until_done(worker, disposals, jobs, mine)
    assert jobs.get(mine).state == JobState.DONE and jobs.get(mine).attempts == 1


def test_a_queued_job_whose_recording_vanished_fails_with_a_reason_and_wedges_nothing(
    setup, disposals, folders
) -> None:
    """Finding 4: its work file is missing; it must end failed (saying so) at once, and the
    job behind it must run."""
    worker, jobs, work = setup
    make = lambda path: write_soundfile(path, 1, 16000, "PCM_16", "FLAC")  # noqa: E731
    gone = _claim(jobs, work, "gone.flac", make)
    behind = _claim(jobs, work, "behind.flac", make)
    (work / jobs.get(gone).work_name).unlink()
    assert worker.step() and worker.step()
    failed = jobs.get(gone)
    assert (failed.state, failed.failure_kind) == (JobState.FAILED, "vanished")
    assert "vanished from the work folder" in (failed.error or "")
    report = json.loads((folders.failed / "gone.flac.error.json").read_text())
    assert "vanished" in report["error"] and "original" in report
    assert disposals.step() and jobs.get(behind).state == JobState.DONE


def test_consecutive_transient_failures_double_the_wait(setup, folders, monkeypatch) -> None:
    """Finding 8: the attempt is refunded each time, but the wait must still grow."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16", "FLAC"))
    monkeypatch.setattr(
        worker.destinations.outbox(("json", "txt")), "publish", _raises(OSError(28, "full"))
    )
    waits = []
    for _ in range(6):
        jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
        assert worker.step()
        waits.append(round(jobs.get(job_id).not_before - time.time()))
    assert waits == [30, 60, 120, 240, 480, 600]
    assert jobs.get(job_id).attempts == 0  # not the file's fault


def test_weeks_of_transient_failures_in_a_row_still_wait_the_longest_wait(
    setup, folders, monkeypatch
) -> None:
    """Issue 22: the wait doubled without end; past 1024 failures in a row (a disk full for a
    week) it overflowed a float, and each failure then counted as an attempt: a good
    recording would be quarantined once the disk came back."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16", "FLAC"))
    monkeypatch.setattr(
        worker.destinations.outbox(("json", "txt")), "publish", _raises(OSError(28, "full"))
    )
    jobs._db.execute("UPDATE jobs SET transient_failures = 5000 WHERE id = ?", (job_id,))
    assert worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    assert round(job.not_before - time.time()) == 600


def test_a_path_that_cannot_exist_fails_for_good_instead_of_retrying_forever(
    setup, folders, monkeypatch
) -> None:
    """Finding 8: ENAMETOOLONG (a too-long outbox path) can never cure itself."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16", "FLAC"))
    monkeypatch.setattr(
        worker.destinations.outbox(("json", "txt")),
        "publish",
        _raises(OSError(36, "File name too long")),
    )
    assert worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.failure_kind) == (JobState.FAILED, "unwritable")
    assert (folders.failed / "a.flac").is_file()


def test_a_failure_while_quarantining_does_not_wedge_the_queue(
    setup, disposals, folders, monkeypatch
) -> None:
    """An error inside the error handling (failed_dir gone) still counts, and the job goes
    behind the others instead of being picked again and again."""
    worker, jobs, work = setup
    make = lambda path: write_soundfile(path, 1, 16000, "PCM_16", "FLAC")  # noqa: E731
    poison = _claim(jobs, work, "poison.flac", make)
    good = _claim(jobs, work, "good.flac", make)
    worker.max_attempts = 1
    monkeypatch.setattr(worker, "_transcribe_and_publish", _raises(RuntimeError("bug")))
    folders.failed.rmdir()
    folders.failed.write_text("not a folder")
    assert worker.step()
    assert jobs.get(poison).state == JobState.QUEUED and jobs.get(poison).attempts == 1
    monkeypatch.undo()
    assert worker.step() and disposals.step()
    assert jobs.get(good).state == JobState.DONE  # the other one first
    folders.failed.unlink()
    folders.failed.mkdir()
    jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (poison,))
    assert worker.step()
    assert jobs.get(poison).state == JobState.FAILED  # spent: quarantined, not run again
    assert (folders.failed / "poison.flac.error.json").is_file()


def test_a_failure_the_failed_folder_cannot_take_waits_and_is_never_transcribed_again(
    setup, folders, monkeypatch
) -> None:
    """An adversary's finding: with failed_dir unusable, each start transcribed the recording
    again, counted attempts past max_attempts, logged a traceback, and the reason that
    reached the failed folder at last was the stale "(then: ...)" chain."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "bad.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16"))
    runs: list[int] = []

    def unreadable(job, started) -> None:
        runs.append(job.id)
        raise PermanentError("not audio: no stream found")

    monkeypatch.setattr(worker, "_transcribe_and_publish", unreadable)
    folders.failed.rmdir()
    folders.failed.write_text("not a folder")
    with capture_logs() as logs:
        for _ in range(2 * worker.max_attempts):
            jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
            assert worker.step()
    job = jobs.get(job_id)
    assert runs == [job_id], "decided once; only the move was tried again"
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)
    assert job.error is not None and job.error.startswith("not audio: no stream found (waiting")
    assert job.error.count("waiting") == 1
    waits = [entry for entry in logs if entry["event"] == "job.cannot_quarantine"]
    assert len(waits) == 2 * worker.max_attempts
    started = [entry["attempt"] for entry in logs if entry["event"] == "job.started"]
    assert started == [1], "a try at the move is not an attempt, nor logged as one"
    assert not [entry for entry in logs if "exc_info" in entry], "no traceback: a folder's fault"

    folders.failed.unlink()
    folders.failed.mkdir()
    jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
    assert worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts, job.error) == (
        JobState.FAILED,
        1,
        "not audio: no stream found",
    )
    reason = json.loads((folders.failed / "bad.flac.error.json").read_text())
    assert (reason["error"], reason["attempts"]) == ("not audio: no stream found", 1)
    assert runs == [job_id]


def test_a_failure_waiting_for_the_failed_folder_is_transcribed_if_its_writer_finishes(
    setup, disposals, folders, monkeypatch
) -> None:
    """I6: a failure decided on a half-written file (not audio yet) waits for the failed
    folder; meanwhile its writer, which had only paused, finishes it. The recording is then
    new content and is transcribed, not moved to the failed folder with the old reason."""
    worker, jobs, work = setup

    def half_written(path: Path) -> Path:
        path.write_bytes(b"RIFF\x00\x00")  # a recorder that paused after 6 bytes
        return path

    job_id = _claim(jobs, work, "late.wav", half_written)
    folders.failed.rmdir()
    folders.failed.write_text("not a folder")
    assert worker.step()
    job = jobs.get(job_id)
    assert job.state == JobState.QUEUED and job.failure_reason is not None
    write_soundfile(work / job.work_name, 2, 16000, "PCM_16")  # the writer finishes
    jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
    _run_until_done(worker, disposals, jobs, job_id)
    job = jobs.get(job_id)
    assert (job.state, job.versions, job.failure_reason) == (JobState.DONE, 1, None)
    assert (folders.outbox / "late.json").is_file()


def test_an_outbox_replaced_by_a_file_makes_the_job_wait_not_fail(
    setup, disposals, folders
) -> None:
    """An adversary's finding: with the outbox (or a folder below it) replaced by a file,
    ENOTDIR was taken for "a path that cannot exist", and a good recording went to the
    failed folder. It is a folder problem the user can fix: the job waits, with a hint."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "sub/good.wav", lambda p: write_soundfile(p, 1, 16000, "PCM_16"))
    (folders.outbox / "sub").write_text("a file where a folder should be")
    with capture_logs() as logs:
        assert worker.step()
    job = jobs.get(job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    [waited] = [entry for entry in logs if entry["event"] == "job.retry_later"]
    assert "a file stands where a folder should be" in waited["hint"]
    (folders.outbox / "sub").unlink()
    jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
    _run_until_done(worker, disposals, jobs, job_id)
    assert (folders.outbox / "sub" / "good.json").is_file()


def _raises(error: Exception):
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    return fail


def test_a_duplicate_whose_recording_vanished_leaves_the_originals_transcript(
    setup, disposals, folders
) -> None:
    """Found in review: the same name and content dropped twice share one transcript; the
    second copy vanishing from the work folder took that transcript back with it."""
    worker, jobs, work = setup
    first = write_soundfile(folders.state / "talk.flac", 1, 16000, "PCM_16", "FLAC")
    original = _claim(jobs, work, "talk.flac", lambda path: shutil.copyfile(first, path))
    again = _claim(jobs, work, "talk.flac", lambda path: shutil.copyfile(first, path))
    assert jobs.get(again).state == JobState.DUPLICATE
    (work / jobs.get(again).work_name).unlink()
    worker.step()
    disposals.step()
    assert jobs.get(original).state == JobState.DONE
    assert (jobs.get(again).state, jobs.get(again).failure_kind) == (JobState.FAILED, "vanished")
    assert (folders.outbox / "talk.json").is_file() and (folders.outbox / "talk.txt").is_file()


def test_a_published_job_that_cannot_be_quarantined_waits_and_is_never_run_again(
    setup, disposals, folders
) -> None:
    """Found in review: its recording vanished and failed_dir was unusable; the fallback put
    the published job back in the queue, where it ran again and took its transcript back."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 1, 16000, "PCM_16", "FLAC"))
    folders.archive.rmdir()
    folders.archive.write_text("not a folder")  # the disposal waits: the job stays published
    assert worker.step() and disposals.step()
    assert jobs.get(job_id).state == JobState.PUBLISHED
    (work / jobs.get(job_id).work_name).unlink()
    folders.failed.rmdir()
    folders.failed.write_text("not a folder")
    jobs._db.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
    disposals.step()
    assert jobs.get(job_id).state == JobState.PUBLISHED  # waiting, not queued
    assert worker.step() is False  # nothing to run
    assert (folders.outbox / "a.json").is_file()


def test_an_outbox_that_is_away_delays_disposal_and_transcribes_nothing_again(
    setup, disposals, folders, monkeypatch
) -> None:
    """The disk decides (Trust 2), but an outbox that is missing as a whole (unmounted) is away,
    not emptied: the original waits; only a transcript removed from a present outbox makes
    its recording transcribed again."""
    worker, jobs, work = setup
    job_id = _claim(jobs, work, "a.flac", lambda p: write_soundfile(p, 2, 16000, "PCM_16", "FLAC"))
    real_dispose = Disposer.dispose
    monkeypatch.setattr(
        Disposer, "dispose", lambda self, job: (_ for _ in ()).throw(OSError(5, "EIO"))
    )
    worker.step()
    disposals.step()  # published; the disposal failed and waits
    assert jobs.get(job_id).state == JobState.PUBLISHED
    monkeypatch.setattr(Disposer, "dispose", real_dispose)
    folders.outbox.rename(folders.outbox.with_name("outbox.away"))
    jobs.defer_disposal(job_id, -1, "due now")
    disposals.step()
    job = jobs.get(job_id)
    assert job.state == JobState.PUBLISHED and "outbox" in (job.error or "")
    assert (work / job.work_name).is_file()
    folders.outbox.with_name("outbox.away").rename(folders.outbox)
    for transcript in folders.outbox.glob("a.*"):  # removed by hand from the outbox that is there
        transcript.unlink()
    jobs.defer_disposal(job_id, -1, "due now")
    disposals.step()
    assert jobs.get(job_id).state == JobState.QUEUED
    assert worker.step() is True and disposals.step()  # transcribed again, then disposed of
    assert jobs.get(job_id).state == JobState.DONE
    assert json.loads((folders.outbox / "a.json").read_text())["source"]["name"] == "a.flac"


def test_a_transcript_taken_back_is_no_longer_found_by_search(
    setup, disposals, folders, monkeypatch
) -> None:
    """Found by the adversary (Trust 2): a recording that changed into garbage after its
    transcript was published failed for good and its files were removed, but search still
    found the withdrawn text."""
    worker, jobs, work = setup
    worker.search = disposals.search = SearchIndex(folders.state / "search.sqlite3")
    job_id = _claim(jobs, work, "xs.flac", lambda p: write_soundfile(p, 2, 16000, "PCM_16", "FLAC"))

    def archive_fails(self: Disposer, job: object) -> str:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Disposer, "dispose", archive_fails)
    worker.step()  # published and indexed
    disposals.step()  # its disposal waits
    indexed = json.loads((folders.outbox / "xs.json").read_text())["text"].split()[0]
    assert worker.search.search(indexed)
    monkeypatch.undo()
    (work / jobs.get(job_id).work_name).write_bytes(b"garbage " * 2000)  # changed after it
    jobs.defer_disposal(job_id, -1, "due now")
    disposals.step()  # changed: transcribed again, as the new version
    jobs.requeue(job_id, 0, None, refund=True)  # due at once
    worker.step()  # the new version is not audio: failed, its earlier transcript taken back
    assert jobs.get(job_id).state == JobState.FAILED
    assert not (folders.outbox / "xs.json").exists()
    assert worker.search.search(indexed) == []
