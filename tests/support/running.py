"""Running the real `transcribed` CLI as a subprocess, the way systemd does."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from support import warm_start

CLI = [sys.executable, "-m", "transcribed"]
NET_GUARD = Path(__file__).parents[1] / "netguard"  # sitecustomize that fails any remote connect
# Without the capabilities that let root read anything, root is held to the permission bits
# like anyone else: as a user who cannot read the service user's files (prefix a command).
NO_OVERRIDE = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
STRANGER_UID = 65534  # nobody: the owner of "the service user's" files in those tests


def transcribe_once(audio: Path, model: Path, **settings: str) -> None:
    """`transcribed transcribe AUDIO` on CPU with TRANSCRIBED_<KEY> settings; must succeed."""
    env = {**os.environ, "TRANSCRIBED_MODEL": str(model), "TRANSCRIBED_DEVICE": "cpu"}
    env |= {f"TRANSCRIBED_{key.upper()}": value for key, value in settings.items()}
    done = subprocess.run(
        [*CLI, "transcribe", str(audio)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


class Daemon:
    """One `transcribed run` process writing its log to `log_path` (appending)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        umask: int = 0o022,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),  # e.g. `ip netns exec NAME`: it execs, the pid stays
    ) -> None:
        self.log_path = log_path
        self._readies_before = self._readies()
        env = {**env, "PYTHONPATH": f"{NET_GUARD}:{env.get('PYTHONPATH', '')}"}
        self.process: subprocess.Popen[bytes] | warm_start.WarmProcess
        if warm_start.enabled() and not prefix:  # a prefix execs: it needs a program to run
            self.process = warm_start.WarmProcess(["run", *args], env, log_path, umask)
            return
        with log_path.open("a") as log:
            self.process = subprocess.Popen(
                [*prefix, *CLI, "run", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.umask(umask),
            )

    def _readies(self) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count('"event": "daemon.ready"')

    def wait_ready(self, timeout: float = 60) -> None:
        """Until this process has recovered, loaded the model and scanned the inbox."""
        self.wait_for(lambda: self._readies() > self._readies_before, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.process.poll() is None, f"the daemon exited early: {self.tail()}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for the daemon: {self.tail()}")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the daemon did not exit: {self.tail()}") from None

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop_cleanly(self, timeout: float = 60) -> None:
        """If it still runs: SIGTERM, and it must exit 0; never left behind a failed test."""
        if self.process.poll() is not None:
            return
        try:
            assert self.stop(timeout) == 0, self.tail()
        finally:
            if self.process.poll() is None:
                self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`transcribed ARGS…` as a subprocess, output captured."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def events(log_path: Path) -> list[dict[str, object]]:
    """Every log line as a JSON event; asserts there is nothing else (no tracebacks)."""
    lines = log_path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) == len(lines), "every log line is a JSON event"
    return parsed


class Listener(threading.Thread):
    """Collects (time, message) from a bound AF_UNIX datagram socket."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        # Socket paths are limited to 108 bytes: pytest's tmp_path can be longer.
        self.folder = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
        self.path = self.folder / "sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def lines(self) -> list[str]:
        return [line for _, message in self.messages for line in message.splitlines()]

    def close(self) -> None:
        self.done.set()
        self.join(5)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.folder.rmdir()
