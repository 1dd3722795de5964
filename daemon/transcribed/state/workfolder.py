"""The private work folder inside the inbox, and the watch that it is still the one we opened.

Claimed recordings are renamed into `<inbox>/.transcribed-work/` (same filesystem: atomic).
A work file's name carries the recording's inbox path (`<token>.<escaped path>`), so the disk
alone says what each file is, even when the job database is lost (docs/design.md I5).

The inbox can be renamed, removed, replaced or remounted under a running daemon. Then the
paths we use point elsewhere, or nowhere: nothing is claimed, transcribed or disposed of until
a folder is back at the inbox path; a new one is opened (its own work folder) and whatever is
left in the old work folder is reported.
"""

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed.errors import ConfigError
from transcribed.files.durable import NAME_MAX, fsync_dir
from transcribed.files.names import display_name
from transcribed.logs import get_logger

log = get_logger(__name__)

WORK_FOLDER_NAME = ".transcribed-work"
_TOKEN_CHARS = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class _Identity:
    dev: int
    ino: int

    @classmethod
    def of(cls, path: Path, follow: bool = True) -> "_Identity | None":
        try:
            info = os.stat(path, follow_symlinks=follow)
        except OSError:
            return None
        return cls(info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


class WorkFolder:
    """`<inbox>/.transcribed-work`, checked to be ours and watched for replacement."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.path = inbox / WORK_FOLDER_NAME
        self._inbox_id: _Identity | None = None
        self._work_id: _Identity | None = None
        self._fd: int | None = None  # held open: the lock, and where an old folder went

    def open(self) -> None:
        """Create or check the work folder and lock it against a second daemon on this inbox;
        ConfigError with what to do when it cannot be used."""
        inbox_id = _Identity.of(self.inbox)
        if inbox_id is None:
            raise ConfigError(f"inbox {self.inbox} is not an existing folder")
        _check_ours(self.path)
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        else:  # durable before anything is claimed into it: a claim fsyncs only its folders
            fsync_dir(self.inbox)
        _check_ours(self.path)
        work_id = _Identity.of(self.path, follow=False)
        assert work_id is not None  # _check_ours: a real folder
        if work_id.dev != inbox_id.dev:
            raise ConfigError(
                f"{self.path} is on another filesystem than the inbox (a mount inside it); "
                "claims must be atomic renames: unmount it or remove it"
            )
        fd = os.open(self.path, _DIR_FLAGS | os.O_NOFOLLOW)
        try:
            _lock(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        old_fd, self._fd = self._fd, fd
        self._inbox_id, self._work_id = inbox_id, work_id
        if old_fd is not None:
            _report_left_behind(old_fd, self.path)
            os.close(old_fd)

    def problem(self) -> str | None:
        """What is wrong with the folders we opened, or None while they are still ours."""
        inbox_id = _Identity.of(self.inbox)
        if inbox_id is None:
            return (
                f"the inbox {self.inbox} is gone (renamed, removed or unmounted): nothing is "
                "taken in or disposed of until it is back"
            )
        if inbox_id != self._inbox_id:
            return f"the inbox {self.inbox} was replaced or remounted: reopening it"
        if _Identity.of(self.path, follow=False) != self._work_id:
            return f"the work folder {self.path} was removed or replaced: reopening it"
        return None

    def reopen(self) -> bool:
        """After `problem`: open the folder now at the inbox path; True when that worked."""
        try:
            self.open()
        except (ConfigError, OSError) as error:
            log.error("inbox.cannot_reopen", inbox=str(self.inbox), error=str(error))
            return False
        log.warning("inbox.reopened", inbox=str(self.inbox))
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def vanished(self) -> str:
        """The reason a job fails with when its recording left this folder without us."""
        return (
            f"the recording vanished from the work folder {self.path} before it was done "
            "(the inbox was replaced or remounted, or the folder was cleaned by hand); if the "
            "old inbox still exists, move the recording from its .transcribed-work folder "
            "into the inbox again"
        )

    def file(self, work_name: str) -> Path:
        return self.path / work_name

    def names(self) -> list[str]:
        """The work files there now (not our lock or temp files)."""
        return [name for name in os.listdir(self.path) if not name.startswith(".")]


def _check_ours(path: Path) -> None:
    """Our work folder is a real folder owned by us: anything else in its place (a file, a
    symlink, someone else's folder) is refused, never used or replaced."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a folder"
        raise ConfigError(
            f"{path} is {what}, not the daemon's work folder; it is refused so that nobody "
            "who can write to the inbox can stop or redirect the daemon: move it away"
        )
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to user {info.st_uid}, not to this daemon's user "
            f"({os.geteuid()}); move it away (it is not ours to use)"
        )


def _lock(fd: int, path: Path) -> None:
    """A second daemon (other state folder, same inbox) would take our claimed files for
    strays. Network filesystems may not lock folders: then we can only warn."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another transcribed is already working on this inbox ({path} is locked); "
            "run one daemon per inbox"
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        log.warning("inbox.cannot_lock", folder=str(path), error=str(error))


def _report_left_behind(old_fd: int, new_path: Path) -> None:
    """The old work folder, wherever it went (its descriptor still names it), and what it
    still holds: those recordings are out of our reach now."""
    with contextlib.suppress(OSError):
        where = os.readlink(f"/proc/self/fd/{old_fd}")
        if where != str(new_path) and not where.endswith(" (deleted)"):
            left = [name for name in os.listdir(old_fd) if not name.startswith(".")]
            log.error(
                "inbox.replaced",
                old_work_folder=display_name(where),
                files_left=len(left),
                hint="recordings left there were not transcribed or disposed of: move them "
                "into the inbox again",
            )


# --- work file names ---------------------------------------------------------------------


def work_name(relpath: str) -> str:
    """A unique work file name that carries the recording's inbox path: `<token>.<path>`,
    with `/`, `%`, control characters and bytes that are not UTF-8 escaped as %XX (SQLite
    takes it as text; `relpath_of` gives the exact path back). A path too long for one name
    keeps its file name only, shortened if it must be."""
    token = secrets.token_hex(_TOKEN_CHARS // 2)
    room = NAME_MAX - _TOKEN_CHARS - 1
    escaped = _escape(relpath)
    if len(escaped.encode()) > room:
        name = _escape(os.path.basename(relpath))
        suffix = _escape(PurePosixPath(relpath).suffix)  # decoders may look at it
        escaped = _trim(name[: len(name) - len(suffix)], room - len(suffix.encode())) + suffix
    return f"{token}.{escaped}"


def relpath_of(name: str) -> str:
    """The inbox path a work file name carries (a name from before paths were carried gives
    itself: the recording is then known by its work name)."""
    token, dot, escaped = name.partition(".")
    if not dot or len(token) != _TOKEN_CHARS or not _is_hex(token) or not escaped:
        return name
    return os.fsdecode(_unescape(escaped))


def _escape(relpath: str) -> str:
    text = os.fsencode(relpath).decode("utf-8", errors="surrogateescape")
    return "".join(_escape_char(char) for char in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"%{code - 0xDC00:02X}"
    if char in "%/" or code < 0x20 or code == 0x7F:
        return f"%{code:02X}"
    return char


def _unescape(escaped: str) -> bytes:
    out = bytearray()
    index = 0
    while index < len(escaped):
        piece = escaped[index : index + 3]
        if piece.startswith("%") and len(piece) == 3 and _is_hex(piece[1:]):
            out.append(int(piece[1:], 16))
            index += 3
        else:
            out += escaped[index].encode()
            index += 1
    return bytes(out)


def _trim(escaped: str, room: int) -> str:
    """Shorten to `room` bytes without cutting a character or an escape in two."""
    while len(escaped.encode()) > room:
        cut = len(escaped) - 1
        if cut >= 2 and escaped[cut - 2] == "%":
            cut -= 2
        escaped = escaped[:cut]
    return escaped


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)
