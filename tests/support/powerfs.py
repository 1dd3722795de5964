"""A disk whose power the tests can cut: a FUSE mount (powerfs_server.py, in memory) that
loses every file's data, and every folder's names, that were not fsynced.

    with PowerFS(tmp_path / "disk") as disk:
        ...                        # folders and files below disk.root
        disk.cut()                 # the power goes: what was not durable is gone, every
                                   # process that used the disk is killed, and it is
                                   # mounted again as a machine would find it on boot
        disk.arm("rename", r"->inbox/", 1)   # or: cut right after an operation, then
        disk.wait_fired(10); disk.reboot()   # kill and remount

The cut itself is one instant inside the server: from then on every request fails (EIO), so
nothing the dying processes do afterwards can become durable; they are then killed with
SIGKILL (with their children), and the mount is made anew (no kernel cache of the old state
survives).
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SERVER = Path(__file__).with_name("powerfs_server.py")


def unavailable() -> str | None:
    """Why no PowerFS can be mounted on this machine, or None when one can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as error:
        return f"pyfuse3 cannot be imported ({error}); install the test extras"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian's fuse3)"
    return None


def require_powerfs() -> None:
    """Skip where no FUSE mount can be made; in CI (CI=1) that is a failure, never a skip."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the power-cut tests: {reason}")
        pytest.skip(reason)


class PowerFS:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._folder = Path(tempfile.mkdtemp(prefix="powerfs-", dir="/tmp"))  # short path
        self._control = self._folder / "control"
        self.log = self._folder / "server.log"
        self._server: subprocess.Popen[bytes] | None = None
        self._connection: socket.socket | None = None
        self.killed = 0  # processes killed by cuts, in all

    def __enter__(self) -> "PowerFS":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._server = subprocess.Popen(
                [sys.executable, str(SERVER), str(self.root), str(self._control)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not (_mounted(self.root) and self._control.exists()):
            if self._server.poll() is not None or time.monotonic() > deadline:
                told = self.log.read_text()[-2000:]
                self.close()
                raise RuntimeError(f"powerfs did not mount: {told}")
            time.sleep(0.05)
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(str(self._control))

    def ask(self, command: str) -> dict[str, object]:
        """One control command (see powerfs_server.py); its JSON answer."""
        assert self._connection is not None
        self._connection.sendall(command.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = self._connection.recv(65536)
            if not chunk:
                raise RuntimeError(f"powerfs stopped: {self.log.read_text()[-2000:]}")
            answer += chunk
        reply = json.loads(answer)
        assert reply["ok"], reply
        return reply

    def sync(self) -> None:
        """Make everything durable, as if it had been on the disk for a long time."""
        self.ask("sync")

    def cut(self) -> int:
        """Cut the power now, kill every process using the disk, and mount it again;
        returns how many processes were killed."""
        self.ask("cut")
        return self.reboot()

    def arm(self, operation: str, pattern: str, nth: int = 1) -> None:
        """Cut the power right after the `nth` `operation` whose subject matches `pattern`
        (a regular expression over "path" or "source->target", relative to the root)."""
        self.ask(f"arm {operation} {nth} {pattern}")

    def fired(self) -> bool:
        return bool(self.ask("fired")["fired"])

    def wait_fired(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fired():
                return True
            time.sleep(0.05)
        return False

    def disarm(self) -> bool:
        """Forget the armed cut; True when it had already happened."""
        return bool(self.ask("disarm")["fired"])

    def reboot(self) -> int:
        """After a cut: kill every process that used the disk, then mount it again."""
        killed = kill_users(self.root, spare={os.getpid(), self._server_pid()})
        self.killed += killed
        self.ask("remount")
        return killed

    def stats(self) -> dict[str, object]:
        return self.ask("stats")

    def _server_pid(self) -> int:
        assert self._server is not None
        return self._server.pid

    def close(self) -> None:
        """Kill what still uses the disk, unmount it, stop the server."""
        if self._server is None:
            return
        kill_users(self.root, spare={os.getpid(), self._server.pid})
        if self._connection is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.ask("quit")
        else:  # it never mounted
            self._server.kill()
        try:
            self._server.wait(15)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait(5)
        if self._connection is not None:
            self._connection.close()
        if _mounted(self.root):  # the server died without unmounting
            subprocess.run(["umount", "-l", str(self.root)], check=False)
        shutil.rmtree(self._folder, ignore_errors=True)
        self._server = None


def _mounted(root: Path) -> bool:
    """Whether something is mounted at `root` (also when its server died: then os.stat
    would fail, and os.path.ismount say no)."""
    with open("/proc/self/mountinfo") as mounts:
        return any(_unescape(line.split()[4]) == str(root) for line in mounts)


def _unescape(field: str) -> str:
    """mountinfo writes a space as \\040 (and a tab, a newline, a backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


# --- the processes a power cut kills ----------------------------------------------------------


def kill_users(root: Path, spare: set[int]) -> int:
    """SIGKILL every process with a file, a mapping or a folder under `root`, and its children,
    until none is left; returns how many were killed."""
    killed: set[int] = set()
    for _round in range(200):
        victims = _users(root, spare)
        victims |= _descendants(victims) - spare
        victims = {pid for pid in victims if _alive(pid)}
        if not victims:
            return len(killed)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= victims
        time.sleep(0.05)
    raise RuntimeError(f"processes under {root} would not die: {sorted(_users(root, spare))}")


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _users(root: Path, spare: set[int]) -> set[int]:
    prefix = str(root)
    return {pid for pid in _pids() if pid not in spare and _uses(pid, prefix)}


def _uses(pid: int, prefix: str) -> bool:
    def under(path: str) -> bool:
        return path == prefix or path.startswith(prefix + "/")

    base = f"/proc/{pid}"
    try:
        links = [f"{base}/cwd", f"{base}/root"]
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
        for link in links:
            with contextlib.suppress(OSError):
                if under(os.readlink(link)):
                    return True
        with open(f"{base}/maps") as maps:
            return any(under(line.split(None, 5)[-1].strip()) for line in maps if "/" in line)
    except OSError:  # gone, or a kernel thread
        return False


def _descendants(pids: set[int]) -> set[int]:
    parents = {}
    for pid in _pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(pids), set(pids)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie holds no files any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
