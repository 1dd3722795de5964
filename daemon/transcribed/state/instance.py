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


@dataclass(frozen=True)
class Holder:
    """The daemon that holds the lock: its process id and when it started (wall clock)."""

    pid: int | None
    since: float | None


class InstanceLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

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
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode(), 0)
        self._fd = fd

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
        return Holder(int(data["pid"]), float(data["since"]))
    return Holder(None, None)


def _held_message(path: Path, found: Holder | None) -> str:
    who = f"PID {found.pid}" if found and found.pid else "another process"
    return (
        f"another transcribed ({who}) is already running with this state folder "
        f"({path.parent}); stop it first (e.g. `systemctl stop transcribed`), or give this one "
        "its own state_dir and inbox"
    )
