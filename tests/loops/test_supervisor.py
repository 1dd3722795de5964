"""The supervisor with real threads: a failing turn backs off and the loop goes on; a dead or
stuck thread is a health problem; a stop ends idle waits at once."""

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import structlog.testing

from transcribed.backoff import Backoff
from transcribed.loops.supervisor import Heartbeat, Loop, Supervisor

QUICK = Backoff(0.01, 0.01)


def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.01)


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    supervisor = Supervisor(threading.Event())
    yield supervisor
    supervisor.stop.set()
    assert supervisor.join(10) == []


def test_a_failing_turn_is_logged_backed_off_and_put_right_and_the_loop_goes_on(
    supervisor: Supervisor,
) -> None:
    """Each failure in a row waits the loop's backoff; `after_failure` runs after each; a
    turn that succeeds starts the count again."""
    errors = iter([sqlite3.OperationalError("disk I/O error"), OSError(28, "full"), None])
    turns, repairs = [], []

    def step() -> bool:
        turns.append(time.monotonic())
        if (error := next(errors, None)) is not None:
            raise error
        return False

    with structlog.testing.capture_logs() as logged:
        supervisor.add(
            Loop("intake", step, 0.01, Backoff(0.2, 0.5), after_failure=lambda: repairs.append(1))
        )
        supervisor.start()
        _until(lambda: len(turns) >= 4)
    assert len(repairs) == 2
    assert turns[1] - turns[0] >= 0.2 and turns[2] - turns[1] >= 0.4  # doubled
    failed = [entry for entry in logged if entry["event"] == "intake.cannot_record"]
    assert [entry["retry_in"] for entry in failed] == [0.2, 0.4]
    assert "disk I/O error" in failed[0]["error"] and failed[1]["hint"]
    assert supervisor.problem() is None


def test_a_bug_in_a_turn_is_logged_with_its_traceback_and_does_not_end_the_loop(
    supervisor: Supervisor,
) -> None:
    turns = []

    def step() -> bool:
        turns.append(1)
        if len(turns) == 1:
            raise KeyError("a bug")
        return False

    with structlog.testing.capture_logs() as logged:
        supervisor.add(Loop("worker-3", step, 0.01, QUICK, cannot_record="worker.other"))
        supervisor.start()
        _until(lambda: len(turns) >= 2)
    [failed] = [entry for entry in logged if entry["event"] == "worker.step_failed"]
    assert isinstance(failed["exc_info"], KeyError)
    assert supervisor.running("worker-3")


def test_a_thread_that_died_is_a_health_problem(supervisor: Supervisor) -> None:
    """A loop that runs itself (the model's) and ends is reported by name."""
    supervisor.add(Loop("hooks", lambda: False, 0.01, QUICK))
    supervisor.add_thread("model", lambda: None)
    supervisor.start()
    _until(lambda: not supervisor.running("model"))
    assert supervisor.problem() == "the model thread has died"


def test_a_loop_silent_beyond_its_stall_limit_is_stuck(supervisor: Supervisor) -> None:
    """A step that hangs stops the heartbeat; one that beats while it works is alive."""
    hung, working = threading.Event(), threading.Event()
    beating = Heartbeat()

    def works_and_beats() -> bool:
        while not working.wait(0.05):
            beating.beat()
        return False

    supervisor.add(
        Loop("worker-0", lambda: hung.wait(30) and False, 0.01, QUICK, stall_seconds=0.3)
    )
    supervisor.add(
        Loop("worker-1", works_and_beats, 0.01, QUICK, heartbeat=beating, stall_seconds=0.3)
    )
    supervisor.start()
    time.sleep(0.5)
    assert supervisor.problem() == "the worker-0 thread has made no progress for 0 s"
    hung.set()
    working.set()
    _until(lambda: supervisor.problem() is None)


def test_a_stop_ends_idle_waits_at_once_and_each_loop_closes_on_its_own_thread() -> None:
    """A loop idling for an hour on its wake event is not waited for at a stop; a loop with
    a limit of its own is given no more than that."""
    supervisor = Supervisor(threading.Event())
    closed: list[str] = []
    stuck = threading.Event()
    supervisor.add(
        Loop(
            "disposals",
            lambda: False,
            3600,
            QUICK,
            wake=threading.Event(),
            close=lambda: closed.append(threading.current_thread().name),
        )
    )
    supervisor.add(Loop("hooks", lambda: stuck.wait(30) and False, 0.01, QUICK, stop_within=0.2))
    supervisor.start()
    time.sleep(0.1)
    supervisor.stop.set()
    started = time.monotonic()
    assert supervisor.join(5) == ["hooks"]
    assert time.monotonic() - started < 1
    assert closed == ["disposals"]
    stuck.set()
    assert supervisor.join(5) == []


def test_a_loop_with_work_waiting_turns_again_at_once(supervisor: Supervisor) -> None:
    turns = []
    supervisor.add(Loop("intake", lambda: turns.append(1) or len(turns) < 50, 3600, QUICK))
    supervisor.start()
    _until(lambda: len(turns) >= 50, seconds=5)
