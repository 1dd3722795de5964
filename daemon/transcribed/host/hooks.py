"""`on_done` / `on_failed`: a configured command run after a job ends, never affecting it.

Commands are argument lists run without a shell, one at a time on their own thread (a slow
hook never holds up transcription), killed after a timeout. What a job produced is passed in
the environment, never as text to interpret. A hook's output is discarded, not logged: it
may echo transcript text.

Calls are durable: each is stored with its job in the job database when the job ends and
forgotten once it has run, so calls still waiting at a stop (or a crash) run after the next
start. A hook killed mid-run by a crash runs again: at least once, not exactly once. A call
that is given up (its command no longer configured) is logged with the job and the reason.
"""

import os
import sqlite3
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from transcribed.logs import get_logger
from transcribed.state.queue import JobQueue

log = get_logger(__name__)


@dataclass(frozen=True)
class HookCall:
    event: str  # "done" or "failed"
    job: int
    environment: dict[str, str]


class Hooks:
    def __init__(
        self,
        database: Path,
        on_done: list[str] | None,
        on_failed: list[str] | None,
        timeout: float,
    ) -> None:
        self._jobs = JobQueue(database)  # its own connection, used under `_lock`
        self._lock = threading.Lock()
        self._commands = {"done": on_done, "failed": on_failed}
        self._timeout = timeout
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="hooks", daemon=True)

    def start(self) -> None:
        """Run the calls stored by the last run, then each new one as it comes."""
        self._thread.start()

    def configure(
        self, on_done: list[str] | None, on_failed: list[str] | None, timeout: float
    ) -> None:
        """New commands (after a config reload) for calls run from now on."""
        self._commands = {"done": on_done, "failed": on_failed}
        self._timeout = timeout

    def submit(self, call: HookCall) -> None:
        """Store the call (thread-safe; called on the thread that ended the job)."""
        if not self._commands.get(call.event):
            return
        with self._lock:
            self._jobs.add_hook_call(call.job, call.event, call.environment)
        self._wake.set()

    def close(self, timeout: float) -> None:
        """Let the call in progress finish for up to `timeout` seconds; calls still waiting
        stay stored, and run after the next start (logged here)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():  # its call stays stored and runs again after the start
            log.warning("hooks.still_running_at_stop", seconds=timeout)
            return
        with self._lock:
            waiting = self._jobs.hook_calls()
            self._jobs.close()
        if waiting:
            log.info(
                "hooks.waiting_at_stop",
                calls=len(waiting),
                jobs=sorted({job for _call, job, _event, _env in waiting}),
                hint="they run after the next start",
            )

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                busy = self._run_stored()
            except sqlite3.Error as error:  # the state folder is full, read-only, …
                log.error("hooks.cannot_read", error=str(error), retry_in=30)
                self._stopping.wait(30)
                continue
            if not busy:
                self._wake.wait(5.0)

    def _run_stored(self) -> bool:
        """Run the stored calls, oldest first; False when there were none."""
        with self._lock:
            calls = self._jobs.hook_calls()
        for call_id, job, event, environment in calls:
            if self._stopping.is_set():
                break
            self._run(HookCall(event, job, environment))
            with self._lock:
                self._jobs.hook_call_done(call_id)
        return bool(calls)

    def _run(self, call: HookCall) -> None:
        command = self._commands.get(call.event)
        if not command:
            log.warning(
                "hook.given_up",
                hook=call.event,
                job=call.job,
                reason=f"on_{call.event} is no longer configured",
            )
            return
        fields = {"hook": call.event, "job": call.job, "command": command[0]}
        try:
            done = subprocess.run(
                command,
                env={**os.environ, **call.environment},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("hook.timeout", seconds=self._timeout, **fields)
        except OSError as error:  # not found, not executable
            log.warning(
                "hook.cannot_run", error=str(error), hint="check the command path", **fields
            )
        else:
            if done.returncode == 0:
                log.info("hook.ran", **fields)
            else:
                log.warning("hook.failed", exit_code=done.returncode, **fields)
