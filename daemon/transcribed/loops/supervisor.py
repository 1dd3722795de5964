"""One supervisor for every long-running loop, in the daemon and in `bench` alike (huey's
consumer with `_create_process` and `check_worker_health`).

A part that runs for months offers a `step`: one turn of work that tests drive directly
(huey's `BaseProcess.loop`), and says in a `Loop` how it wants to be run: how long it waits
when there was nothing to do, what wakes it early, how it backs off after failed turns and
what it puts right after one. The supervisor runs each on a thread of its own, so no part
counts failures, backs off or beats its heart its own way:

- a turn that raises is logged (a disk or database error with the way out, anything else
  with its traceback), followed by the loop's backoff (`transcribed.backoff`) and its
  `after_failure`; the loop goes on, and never takes the daemon down;
- each turn is a heartbeat, and a long step beats too (the worker, between model batches):
  one silent for longer than its `stall_seconds` is stuck, and `problem` says so, as it
  says when any thread has died (the daemon's health check, and so systemd's watchdog);
- at a stop every idle wait is cut short, and `join` waits for each within the time left.

A thread that runs itself (the model's) is supervised the same way, apart from the turns.
"""

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from transcribed.errors import advice
from transcribed.logs import get_logger

log = get_logger(__name__)


class Heartbeat:
    """When a loop last showed it is alive: each turn, and wherever a long step progresses."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self._last


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Loop:
    """How one long-running loop is run. Its log events are `<kind>.cannot_record` (a disk
    or database error) and `<kind>.step_failed` (anything else), the kind being its name up
    to a dash, unless it names its own."""

    name: str  # its thread's name, as the health check reports it
    step: Callable[[], object]  # one turn; truthy when more work is waiting at once
    idle_seconds: float  # the wait after a turn that found nothing to do
    backoff: Callable[[int], float]  # the wait after failed turns in a row (`Backoff`)
    after_failure: Callable[[], None] = _nothing  # puts right what a failed turn cut short
    wake: threading.Event | None = None  # set when work arrives: ends an idle wait early
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    stall_seconds: float | None = None  # silent this long: stuck (a hung call), unhealthy
    close: Callable[[], None] = _nothing  # on its own thread once it ends (its connection)
    stop_within: float | None = None  # waited for at most this long at a stop (first)
    daemon: bool = False  # not waited for when the process exits
    cannot_record: str | None = None
    step_failed: str | None = None

    @property
    def kind(self) -> str:
        return self.name.split("-")[0]


@dataclass
class _Runner:
    name: str
    thread: threading.Thread
    silent_for: Callable[[], float]
    stall_seconds: float | None
    stop_within: float | None
    wake: threading.Event | None


class Supervisor:
    """Runs loops until `stop` is set; `add` them, `start` once, then `problem` and `join`."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._runners: list[_Runner] = []

    def add(self, loop: Loop) -> None:
        thread = threading.Thread(
            target=self._run, args=(loop,), name=loop.name, daemon=loop.daemon
        )
        self._runners.append(
            _Runner(
                loop.name,
                thread,
                loop.heartbeat.silent_for,
                loop.stall_seconds,
                loop.stop_within,
                loop.wake,
            )
        )

    def add_thread(
        self,
        name: str,
        target: Callable[[], object],
        silent_for: Callable[[], float] = lambda: 0.0,
        stall_seconds: float | None = None,
    ) -> None:
        """A loop that runs itself until `stop` (the model's); `silent_for` says how long it
        has gone without progress."""
        thread = threading.Thread(target=target, name=name)
        self._runners.append(_Runner(name, thread, silent_for, stall_seconds, None, None))

    def start(self) -> None:
        for runner in self._runners:
            runner.thread.start()

    def running(self, name: str) -> bool:
        return any(r.thread.is_alive() for r in self._runners if r.name == name)

    def problem(self) -> str | None:
        """Why the loops are not healthy (a thread died, one is stuck); None when they are,
        and once they are stopping (a loop that has ended then has not died)."""
        if self.stop.is_set():
            return None
        for runner in self._runners:
            if not runner.thread.is_alive():
                return f"the {runner.name} thread has died"
        for runner in self._runners:
            limit = runner.stall_seconds
            if limit is not None and runner.silent_for() > limit:
                return f"the {runner.name} thread has made no progress for {limit:.0f} s"
        return None

    def join(self, seconds: float) -> list[str]:
        """After `stop`: wait for the loops to end, those with a limit of their own first
        (each within it), then the others within `seconds`; the names still running."""
        for runner in self._runners:
            if runner.wake is not None:
                runner.wake.set()
        limited = [r for r in self._runners if r.stop_within is not None]
        for runner in limited:
            runner.thread.join(runner.stop_within)
        deadline = time.monotonic() + seconds
        for runner in self._runners:
            if runner not in limited:
                runner.thread.join(max(0.0, deadline - time.monotonic()))
        return [runner.name for runner in self._runners if runner.thread.is_alive()]

    # --- on each loop's own thread -------------------------------------------------------

    def _run(self, loop: Loop) -> None:
        failures = 0
        try:
            while not self.stop.is_set():
                failures = self._turn(loop, failures)
        finally:
            loop.close()

    def _turn(self, loop: Loop, failures: int) -> int:
        """One turn and the wait after it; the failed turns in a row, this one included."""
        loop.heartbeat.beat()
        if loop.wake is not None:
            loop.wake.clear()  # work that arrives from now on wakes the wait below
        try:
            busy = loop.step()
        except Exception as error:
            self._back_off(loop, error, failures + 1)
            return failures + 1
        if not busy:
            (loop.wake or self.stop).wait(loop.idle_seconds)
        return 0

    def _back_off(self, loop: Loop, error: Exception, failures: int) -> None:
        """Log the failure, wait the loop's backoff, then let it put right what the failed
        turn cut short (still failing: the next turn backs off again)."""
        delay = loop.backoff(failures)
        if isinstance(error, OSError | sqlite3.Error):  # the state dir is full, read-only, …
            event = loop.cannot_record or f"{loop.kind}.cannot_record"
            log.error(event, error=str(error), retry_in=delay, hint=advice(error))
        else:  # a bug: logged with its traceback, and the daemon stays up
            event = loop.step_failed or f"{loop.kind}.step_failed"
            log.error(event, retry_in=delay, exc_info=error)
        self.stop.wait(delay)
        with contextlib.suppress(OSError, sqlite3.Error):
            loop.after_failure()
