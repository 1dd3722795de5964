"""What a recording's bytes are, and whether anyone may still be adding to them (docs/design.md I6).

A claimed recording is hashed once; before its transcript is published and before it is
disposed of, the file is compared with what was hashed. A writer that paused longer than the
settle window (a stalled share copy, a recorder flushing in bursts) may still hold the file
open and go on writing into it after the claim: its size, modification or change time then
moved, and the content is hashed again.

Where the kernel can tell, a file still open for writing is not taken at all: a read lease
(`F_SETLEASE`, `F_RDLCK`) is refused with EAGAIN while any process on this machine holds it
open for writing (a local recorder, `ffmpeg`, Samba's smbd serving a client's copy). A writer on
another machine writing through a network mount that the daemon reads cannot be seen that
way: the comparison above is what catches it.
"""

import errno
import fcntl
import hashlib
import os
import signal
import threading
from dataclasses import dataclass

from transcribed import faults

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """What changes when anyone writes to, truncates or replaces a file's content: its size, its
    modification time and its change time (which a writer cannot set back)."""

    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> "Fingerprint":
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@dataclass(frozen=True)
class Content:
    """A file's bytes as hashed: SHA-256, how many bytes, and its fingerprint before hashing
    began (so a write during the hash shows as a change later, never as the hashed state)."""

    sha256: str
    size: int
    fingerprint: Fingerprint


def hash_descriptor(fd: int, stop: threading.Event | None = None) -> Content:
    """SHA-256 and size of everything readable through `fd`, from the start (cut short, and
    meaningless, once `stop` is set)."""
    before = Fingerprint.of(os.fstat(fd))
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _BLOCK):
        digest.update(chunk)
        size += len(chunk)
        if stop is not None and stop.is_set():
            break
    return Content(digest.hexdigest(), size, before)


def hash_file(path: os.PathLike[str] | str) -> Content:
    """`hash_descriptor` of a file opened without following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return hash_descriptor(fd)
    finally:
        os.close(fd)


# --- writers still at work --------------------------------------------------------------------

_UNKNOWN = frozenset({errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP})


def open_for_writing(fd: int) -> bool | None:
    """True while another process holds the file behind `fd` (opened read-only) open for
    writing; False when none does; None when the kernel cannot tell (a network filesystem, a
    file of another user without CAP_LEASE). The lease is let go at once."""
    try:
        faults.point("lease.probe")  # tests: EINVAL stands for a network filesystem
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EBUSY):
            return True
        if error.errno in _UNKNOWN:
            return None
        raise
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def ignore_lease_breaks() -> None:
    """A writer opening the file in the instant we hold a lease makes the kernel send us SIGIO,
    whose default action ends the process: the daemon ignores it (its lease is let go at once
    anyway). Only the main thread may set it: call it there at start."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGIO, signal.SIG_IGN)
