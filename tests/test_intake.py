"""Intake with real files and a real observer: settle, claim safely, never follow links."""

import contextlib
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import pytest

from transcribed.intake import Intake, recover_claims
from transcribed.queue import JobQueue, JobState
from transcribed.watcher import start_observer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _intake(inbox: Path, state: Path, clock: Clock) -> Intake:
    return Intake(
        inbox=inbox,
        work_dir=inbox / ".transcribed-work",
        jobs=JobQueue(state / "q.db"),
        arrivals=queue.SimpleQueue(),
        settle_seconds=2,
        rescan_seconds=300,
        clock=clock,
    )


def _settle(intake: Intake, clock: Clock) -> int:
    claimed = intake.step()
    clock.now += 2
    return claimed + intake.step()


def test_rescan_claims_settled_files_into_the_work_folder(folders) -> None:
    (folders.inbox / "team" / "a").mkdir(parents=True)
    (folders.inbox / "team" / "a" / "one.wav").write_bytes(b"RIFF1")
    (folders.inbox / "two.mp3").write_bytes(b"ID3-2")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 2
    jobs = intake.jobs.in_state(JobState.QUEUED)
    assert sorted(job.relpath for job in jobs) == [b"team/a/one.wav", b"two.mp3"]
    assert not (folders.inbox / "two.mp3").exists()
    for job in jobs:
        assert (folders.inbox / ".transcribed-work" / job.work_name).is_file()


def test_a_file_still_growing_is_not_claimed(folders) -> None:
    path = folders.inbox / "rec.wav"
    path.write_bytes(b"x")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    for _ in range(4):
        intake.step()
        with path.open("ab") as handle:
            handle.write(b"more")
        clock.now += 1.5
    assert intake.step() == 0 and path.exists()
    clock.now += 2
    assert intake.step() == 1


def test_symlinks_fifos_hardlinks_and_folders_are_refused_untouched(folders, tmp_path) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"outside the inbox")
    before = outside.stat()
    (folders.inbox / "link.wav").symlink_to(outside)
    os.mkfifo(folders.inbox / "pipe.wav")
    (folders.inbox / "hard.wav").write_bytes(b"two names")
    os.link(folders.inbox / "hard.wav", tmp_path / "other-name.wav")
    (folders.inbox / "dir.wav").mkdir()
    (folders.inbox / "linked-dir").symlink_to(tmp_path)
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 0
    assert intake.jobs.counts() == {}
    assert (folders.inbox / "link.wav").is_symlink()
    assert (folders.inbox / "pipe.wav").exists() and (folders.inbox / "hard.wav").exists()
    after = outside.stat()
    assert (after.st_mtime_ns, after.st_mode, outside.read_bytes()) == (
        before.st_mtime_ns,
        before.st_mode,
        b"outside the inbox",
    )


def test_identical_content_under_two_names_is_queued_once(folders) -> None:
    for name in ("a.wav", "copy of a.wav"):
        (folders.inbox / name).write_bytes(b"same recording")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 2
    assert intake.jobs.counts() == {"queued": 1, "duplicate": 1}


def test_a_claim_interrupted_after_the_rename_is_finished_at_start(folders) -> None:
    work = folders.inbox / ".transcribed-work"
    work.mkdir()
    jobs = JobQueue(folders.state / "q.db")
    moved = jobs.begin_claim(b"moved.wav", "m.wav")
    (work / "m.wav").write_bytes(b"content")
    never_moved = jobs.begin_claim(b"stayed.wav", "s.wav")
    assert recover_claims(jobs, work) == 1
    assert jobs.get(moved).state == JobState.QUEUED and jobs.get(moved).size == 7
    with pytest.raises(KeyError):
        jobs.get(never_moved)


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_real_observer_reports_files_written_renamed_in_and_moved_from_outside(
    folders, tmp_path, mode
) -> None:
    arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer = start_observer(folders.inbox, arrivals, mode, poll_seconds=0.2)
    try:
        (folders.inbox / "written.wav").write_bytes(b"a")
        (folders.inbox / ".upload.tmp").write_bytes(b"b")
        (folders.inbox / ".upload.tmp").rename(folders.inbox / "renamed.wav")
        (tmp_path / "outside.flac").write_bytes(b"c")
        shutil.move(tmp_path / "outside.flac", folders.inbox / "moved.flac")
        (folders.inbox / "ignored.txt").write_bytes(b"d")
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while seen != {"written.wav", "renamed.wav", "moved.flac"} and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.add(arrivals.get(timeout=0.2))
        assert seen == {"written.wav", "renamed.wav", "moved.flac"}
    finally:
        observer.stop()
        observer.join()


def test_intake_thread_survives_and_stops_on_request(folders) -> None:
    intake = _intake(folders.inbox, folders.state, Clock())
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop, 0.01))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
