"""`on_done` / `on_failed`: a configured command run after a job ends, never affecting it.

Commands are argument lists run without a shell, one at a time on their own thread (a slow
hook never holds up transcription), killed after a timeout. What a job produced is passed in
the environment, never as text to interpret. A hook's output is discarded, not logged: it
may echo transcript text.
"""

import os
import queue
import subprocess
import threading
from dataclasses import dataclass

from transcribed.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class HookCall:
    event: str  # "done" or "failed"
    job: int
    environment: dict[str, str]


class Hooks:
    def __init__(
        self, on_done: list[str] | None, on_failed: list[str] | None, timeout: float
    ) -> None:
        self._commands = {"done": on_done, "failed": on_failed}
        self._timeout = timeout
        self._calls: queue.SimpleQueue[HookCall | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="hooks", daemon=True)
        self._thread.start()

    def configure(
        self, on_done: list[str] | None, on_failed: list[str] | None, timeout: float
    ) -> None:
        """New commands (after a config reload) for calls made from now on."""
        self._commands = {"done": on_done, "failed": on_failed}
        self._timeout = timeout

    def submit(self, call: HookCall) -> None:
        if self._commands.get(call.event):
            self._calls.put(call)

    def close(self, timeout: float) -> None:
        """Let queued hooks finish for up to `timeout` seconds."""
        self._calls.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            command = self._commands.get(call.event)
            if command:
                self._run(command, call)

    def _run(self, command: list[str], call: HookCall) -> None:
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
