"""One daemon per state folder: an exclusive lock held for the daemon's whole life.

A second daemon on the same job database would requeue the first one's running job, transcribe
it again and delete its temp files. The lock is `flock` on `state_dir/daemon.lock`, which the
kernel releases when the process dies however it dies (kill -9 included), so a stale lock file
never blocks a restart. The file also says who holds it, for the error and for `status`.
"""

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from transcribed.errors import ConfigError

LOCK_NAME = "daemon.lock"
# A `status` that peeks at the lock holds it shared for an instant: a daemon starting at that
# moment tries again for this long before it believes another daemon runs.
_ACQUIRE_SECONDS = 2.0
# The running daemon touches its lock file this often (its mtime is the beat): a daemon that
# holds the lock but has not beaten for SILENT_SECONDS is stopped (SIGSTOP) or hung. Seldom
# enough that a quiet server's disk may sleep between beats.
BEAT_SECONDS = 30.0
SILENT_SECONDS = 3 * BEAT_SECONDS


@dataclass(frozen=True)
class Holder:
    """The daemon that holds the lock: its process id, when it started and when it last
    showed it was alive (wall clock)."""

    pid: int | None
    since: float | None
    alive_at: float | None = None
    ready: bool = False  # past its start (the model loaded): from then on it beats


class InstanceLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None
        self._beaten = 0.0  # monotonic

    def acquire(self) -> None:
        """Hold the lock or raise ConfigError naming the daemon that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        deadline = time.monotonic() + _ACQUIRE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ConfigError(_held_message(self.path, holder(self.path.parent))) from None
                time.sleep(0.1)
        self._fd = fd
        self._since = time.time()
        self._write(ready=False)

    def _write(self, ready: bool) -> None:
        assert self._fd is not None
        who = {"pid": os.getpid(), "since": self._since, "ready": ready}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(who).encode(), 0)

    def ready(self) -> None:
        """The start is over (a long model load included): from now on the daemon beats."""
        self._write(ready=True)

    def beat(self) -> None:
        """Say the daemon is alive (from its main loop): at most every BEAT_SECONDS."""
        if self._fd is not None and time.monotonic() - self._beaten >= BEAT_SECONDS:
            os.utime(self._fd)
            self._beaten = time.monotonic()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def holder(state_dir: Path) -> Holder | None:
    """The running daemon that holds `state_dir`'s lock, or None when none does."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # never started here, or not readable: nothing says a daemon runs
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        data = json.loads(os.pread(fd, 4096, 0))
        alive_at = os.fstat(fd).st_mtime
        return Holder(int(data["pid"]), float(data["since"]), alive_at, bool(data.get("ready")))
    return Holder(None, None)


def _held_message(path: Path, found: Holder | None) -> str:
    who = f"PID {found.pid}" if found and found.pid else "another process"
    return (
        f"another transcribed ({who}) is already running with this state folder "
        f"({path.parent}); stop it first (e.g. `systemctl stop transcribed`), or give this one "
        "its own state_dir and inbox"
    )
