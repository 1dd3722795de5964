"""Durable file operations: a file or rename only counts once it is fsynced, folder included."""

import contextlib
import ctypes
import errno
import os
import re
import secrets
import threading
from pathlib import Path

from transcribed import faults
from transcribed.errors import FolderUnusable

# Longest file name (in bytes) that common Linux filesystems accept.
NAME_MAX = 255


def fsync_dir(directory: Path) -> None:
    """Make renames and links in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_SUFFIX = ".tmp"


def temp_name(final_name: str) -> str:
    """A hidden temp name beside the final one: ignored by our watcher and by most tools."""
    return "." + fit_name(final_name, f".{secrets.token_hex(4)}{TEMP_SUFFIX}", reserve=1)


def fit_name(stem: str, suffix: str, reserve: int = 0) -> str:
    """`stem + suffix`, with `stem` shortened (on a character boundary) so the name fits in
    NAME_MAX bytes with `reserve` bytes to spare: a 255-byte recording name still gets
    `<name>.error.json`, `<stem>-2.json` and temp names."""
    room = NAME_MAX - reserve - len(os.fsencode(suffix))
    raw = os.fsencode(stem)
    if len(raw) <= room:
        return stem + suffix
    while room and raw[room] & 0xC0 == 0x80:  # do not cut a UTF-8 character in two
        room -= 1
    return os.fsdecode(raw[:room]) + suffix


def write_temp(
    directory: Path, final_name: str, data: bytes, mode: int = 0o640, label: str = "file"
) -> Path:
    """Write `data` to a fresh fsynced temp file in `directory` and return its path.

    The mode is set exactly (not filtered by the umask): it is the user's privacy setting.
    """
    temp = directory / temp_name(final_name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        faults.point(f"{label}.written", final_name)
        os.fsync(fd)
        faults.point(f"{label}.fsynced", final_name)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    return temp


def publish_bytes(target: Path, data: bytes, *, mode: int = 0o640, label: str = "file") -> None:
    """Atomically make `target` hold `data`; readers see the old file or the new, never a part.

    The caller fsyncs the folder once after publishing everything that belongs together.
    """
    temp = write_temp(target.parent, target.name, data, mode, label)
    try:
        os.replace(temp, target)
        faults.point(f"{label}.published", target.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


# A hard link cannot be made: another filesystem; another user's file that we may not write
# (fs.protected_hardlinks, on by default); a filesystem without links (vfat, exFAT, many
# shares); too many links.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})
_AT_FDCWD = -100  # "relative to the working directory", for the *at() calls
_RENAME_NOREPLACE = 1  # linux/fs.h
_libc = ctypes.CDLL(None, use_errno=True)
# Where neither a link nor a rename that cannot replace works, a name is checked and taken
# under this lock: that covers this daemon's own threads, never another writer.
_TAKING = threading.Lock()


def take_name(
    temp: str | Path, name: str | Path, dir_fd: int | None = None, temp_dir_fd: int | None = None
) -> bool:
    """Give the finished file `temp` the name `name` unless that exists; False when it does.
    Never replaces another file: a hard link (then `temp` goes); where the filesystem has no
    links, a rename that cannot replace (renameat2 RENAME_NOREPLACE). With `dir_fd`, `name`
    is relative to that folder, and so is `temp` unless `temp_dir_fd` says where it is."""
    source_fd = dir_fd if temp_dir_fd is None else temp_dir_fd
    try:
        os.link(temp, name, follow_symlinks=False, src_dir_fd=source_fd, dst_dir_fd=dir_fd)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in _NO_LINK:
            raise
        return _rename_no_replace(temp, name, source_fd, dir_fd)
    os.unlink(temp, dir_fd=source_fd)
    return True


def _rename_no_replace(
    temp: str | Path, name: str | Path, source_fd: int | None, dir_fd: int | None
) -> bool:
    source = _AT_FDCWD if source_fd is None else source_fd
    folder = _AT_FDCWD if dir_fd is None else dir_fd
    if _libc.renameat2(source, os.fsencode(temp), folder, os.fsencode(name), _RENAME_NOREPLACE):
        number = ctypes.get_errno()
        if number == errno.EEXIST:
            return False
        if number not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: flags this fs cannot do
            raise OSError(number, os.strerror(number), os.fsdecode(name))
        with _TAKING:
            if _exists(name, dir_fd):
                return False
            os.rename(temp, name, src_dir_fd=source_fd, dst_dir_fd=dir_fd)
    return True


def _exists(name: str | Path, dir_fd: int | None) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def link_or_copy_no_overwrite(source: Path, target: Path) -> None:
    """Put `source`'s content at `target` durably without overwriting; raise FileExistsError.

    Hard-links where it can; otherwise (another filesystem, another user's file under
    fs.protected_hardlinks) copies through an fsynced temp file.
    The source stays in place: the caller removes it once the target is durable.
    """
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except OSError as error:
        if error.errno not in _NO_LINK:
            raise
    temp = target.parent / temp_name(target.name)
    try:
        _copy_fsynced(source, temp)
        if not take_name(temp, target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _copy_fsynced(source: Path, target: Path) -> None:
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        dst = os.open(target, flags, os.fstat(src).st_mode & 0o777)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def unique_name(
    directory: Path, name: str, reserve: int = 0, companion: str = "", numbered: str = "-{}"
) -> Path:
    """`directory/name`, or `stem-2.ext`, `stem-3.ext`… for the first name not yet taken
    (nor, with `companion`, that name plus it: a reason file beside a failed recording),
    shortened where needed to leave `reserve` bytes for a suffix the caller adds.
    `numbered`: how the number follows the stem (`" (copy {})"`: `stem (copy 2).ext`)."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:
        stem, dot, suffix = name, "", ""
    candidate = directory / fit_name(stem, dot + suffix, reserve)
    number = 2
    while os.path.lexists(candidate) or (companion and os.path.lexists(f"{candidate}{companion}")):
        candidate = directory / fit_name(stem, f"{numbered.format(number)}{dot}{suffix}", reserve)
        number += 1
    return candidate


def make_folders(root: Path, relative: Path) -> Path:
    """Create `root/relative` folder by folder, fsyncing each parent that gained an entry.
    A symbolic link on the way is refused (I3): whoever can write below the outbox or the
    archive could otherwise send transcripts and originals anywhere the daemon may write."""
    folder = root
    for part in relative.parts:
        child = folder / part
        try:
            child.mkdir(mode=0o750)
            fsync_dir(folder)
        except FileExistsError:
            if child.is_symlink():
                raise FolderUnusable(
                    errno.ELOOP,
                    f"{child} is a symbolic link, which the daemon does not follow: make it "
                    "a folder (what waits for it goes on by itself)",
                ) from None
        folder = child
    return folder


_OUR_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$", re.DOTALL)


def remove_stale_temps(root: Path) -> int:
    """Delete temp files a crash left below `root` (never a finished file: those have their
    final names); return how many. Only our own pattern is touched, and no symlink followed."""
    removed = 0
    for folder, _subfolders, files in os.walk(root):  # os.walk never enters symlinked folders
        stale = [name for name in files if _OUR_TEMP.match(name)]
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
                removed += 1
        if stale:
            fsync_dir(Path(folder))
    return removed


def check_outside(folder: Path, inbox: Path) -> None:
    """Refuse to write into the inbox: a destination swapped for a symlink into it would have
    the daemon take its own output as new recordings, in an endless loop."""
    if Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(inbox)):
        raise FolderUnusable(
            errno.ELOOP, f"{folder} now leads into the inbox {inbox} (a symbolic link?)"
        )
