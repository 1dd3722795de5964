"""Daemons started from a warm interpreter: torch and transformers are imported once per test
run, not once per daemon.

The suite starts about 150 daemons; each spent ~2.5 s of its ~4 s start importing torch and
transformers before it ran a line of ours. A multiprocessing fork server imports those
third-party libraries once; each daemon is a fork of it that then does what `python -m
transcribed run` does: its own environment, umask, log on stdout and stderr, and our package
imported fresh (never preloaded: `transcribed.faults` reads the environment at import).
`TRANSCRIBED_TEST_COLD_START=1` starts every daemon as a plain subprocess instead.

Keep this module's imports light: every warm daemon imports it to find `_run_cli`.
"""

import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from multiprocessing.context import ForkServerContext
from pathlib import Path

# Third-party only, heaviest first. Whatever is not listed is imported by the daemon itself.
_PRELOAD = [
    "torch",
    "transformers",
    "transformers.activations",
    "transformers.masking_utils",
    "transformers.modeling_utils",
    "transformers.models.qwen3_asr.modeling_qwen3_asr",
    "numpy",
    "soundfile",
    "av",
    "aiohttp",
    "pydantic_settings",
    "structlog",
    "watchdog.observers",
]
_context: ForkServerContext | None = None
_started: list["WarmProcess"] = []


def enabled() -> bool:
    return os.environ.get("TRANSCRIBED_TEST_COLD_START", "") in ("", "0")


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD)
    return _context


class WarmProcess:
    """The part of `subprocess.Popen` the tests use, for a daemon forked from the warm server."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, umask: int) -> None:
        self.args = args
        self._process = _fork_server().Process(
            target=_run_cli,
            args=(args, env, str(log_path), umask, os.getcwd()),
            name="transcribed",
        )
        self._process.start()
        self.pid: int = self._process.pid  # type: ignore[assignment]
        _started.append(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def kill_leftovers() -> None:
    """At the end of the run: a daemon a failed test left behind must not hold pytest's exit
    (multiprocessing joins its children then)."""
    for process in _started:
        process.kill()
        process.wait(10)
    _started.clear()


def _run_cli(args: list[str], env: dict[str, str], log_path: str, umask: int, cwd: str) -> None:
    """In the fork: become `python -m transcribed ARGS` with this environment, in the folder
    the test was in (as a subprocess would be, not the fork server's)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    os.umask(umask)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # Line-buffered as under PYTHONUNBUFFERED: a daemon killed outright keeps its last lines.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["transcribed", *args]
    for folder in reversed(env.get("PYTHONPATH", "").split(":")):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)
        if folder and (Path(folder) / "sitecustomize.py").is_file():  # the network guard
            runpy.run_path(str(Path(folder) / "sitecustomize.py"))
    from transcribed.cli.main import main

    sys.exit(main(args))
