"""Missed events never mean missed files: rescans and the observer supervisor cover them.

Each case injects the loss for real: an observer whose events go nowhere (what an inotify
overflow does: watchdog drops it silently), a handler that raises, a dead observer thread,
files created while nothing was watching, and a poll-mode watch with no inotify at all.
"""

import contextlib
import queue
import time
from pathlib import Path

import pytest

from support.supervised import supervised
from transcribed.intake import watcher
from transcribed.intake.claim import Intake
from transcribed.intake.watcher import ObserverSupervisor, start_observer
from transcribed.state.queue import JobQueue, JobState
from transcribed.state.workfolder import WorkFolder


def _intake(folders, arrivals: "queue.SimpleQueue[str]", rescan_seconds: float) -> Intake:
    work = WorkFolder(folders.inbox)
    work.open()
    return Intake(
        inbox=folders.inbox,
        work=work,
        jobs=JobQueue(folders.state / "q.db"),
        arrivals=arrivals,
        settle_seconds=0.2,
        rescan_seconds=rescan_seconds,
    )


def _running(intake: Intake) -> contextlib.AbstractContextManager[object]:
    return supervised(intake.loop(0.05))


def _claimed(intake: Intake, count: int, timeout: float) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = intake.jobs.in_state(JobState.QUEUED)
        if len(jobs) >= count:
            return sorted(job.relpath for job in jobs)
        time.sleep(0.1)
    raise AssertionError("not claimed in time")


def test_lost_events_are_made_good_by_the_periodic_rescan(folders) -> None:
    lost: queue.SimpleQueue[str] = queue.SimpleQueue()  # events go here and nowhere else
    observer = start_observer(folders.inbox, lost, "events", 1)
    intake = _intake(folders, queue.SimpleQueue(), rescan_seconds=1.0)
    try:
        with _running(intake):
            for number in range(20):
                (folders.inbox / f"burst {number:02d}.wav").write_bytes(b"RIFF%d" % number)
            assert len(_claimed(intake, 20, 10)) == 20
    finally:
        observer.stop()


def test_a_handler_that_raises_does_not_kill_the_observer(folders, monkeypatch) -> None:
    arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
    real, calls = watcher.is_candidate, []

    def explode_once(relpath: str) -> bool:
        calls.append(relpath)
        if len(calls) == 1:
            raise RuntimeError("a bug in the handler")
        return real(relpath)

    monkeypatch.setattr(watcher, "is_candidate", explode_once)
    observer = start_observer(folders.inbox, arrivals, "events", 1)
    try:
        (folders.inbox / "first.wav").write_bytes(b"a")
        (folders.inbox / "second.wav").write_bytes(b"b")
        assert arrivals.get(timeout=5) == "first.wav"  # its close event, after the failed create
        assert observer.is_alive()
    finally:
        observer.stop()


def test_a_dead_observer_is_restarted_and_a_rescan_requested(folders) -> None:
    arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
    rescans: list[bool] = []
    supervisor = ObserverSupervisor(
        folders.inbox, arrivals, "events", 1, request_rescan=lambda: rescans.append(True)
    )
    try:
        assert supervisor.check() is False
        supervisor.observer.stop()  # the thread ends, as it does after an unhandled error
        supervisor.observer.join(5)
        assert supervisor.check() is True and rescans == [True]
        (folders.inbox / "after restart.wav").write_bytes(b"a")
        assert arrivals.get(timeout=5) == "after restart.wav"
    finally:
        supervisor.stop()


def test_files_created_while_nothing_watched_are_found_at_start(folders) -> None:
    (folders.inbox / "team").mkdir()
    for name in ("while stopped.wav", "team/also.flac"):
        (folders.inbox / name).write_bytes(name.encode())
    intake = _intake(folders, queue.SimpleQueue(), rescan_seconds=300)
    intake.rescan()  # what the daemon does at start
    with _running(intake):
        assert _claimed(intake, 2, 10) == [b"team/also.flac", b"while stopped.wav"]


@pytest.mark.parametrize("writer", ["in place", "rename"])
def test_poll_mode_sees_writes_without_inotify(folders, tmp_path: Path, writer: str) -> None:
    arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer = start_observer(folders.inbox, arrivals, "poll", 0.2)
    intake = _intake(folders, arrivals, rescan_seconds=300)
    try:
        with _running(intake):
            time.sleep(0.5)  # the poller's first snapshot
            if writer == "in place":
                (folders.inbox / "from nas.wav").write_bytes(b"RIFF")
            else:
                (folders.inbox / ".from nas.wav.tmp").write_bytes(b"RIFF")
                (folders.inbox / ".from nas.wav.tmp").rename(folders.inbox / "from nas.wav")
            assert _claimed(intake, 1, 10) == [b"from nas.wav"]
    finally:
        observer.stop()
