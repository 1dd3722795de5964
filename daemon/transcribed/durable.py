"""Durable file operations: a file or rename only counts once it is fsynced, folder included."""

import contextlib
import errno
import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make renames and links in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(final_name: str) -> str:
    """A hidden temp name beside the final one: ignored by our watcher and by most tools."""
    return f".{final_name}.{secrets.token_hex(4)}.tmp"


def write_temp(directory: Path, final_name: str, data: bytes, mode: int = 0o640) -> Path:
    """Write `data` to a fresh fsynced temp file in `directory` and return its path."""
    temp = directory / temp_name(final_name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    os.close(fd)
    return temp


def publish_bytes(target: Path, data: bytes, *, replace: bool, mode: int = 0o640) -> bool:
    """Atomically make `target` hold `data`; readers see the old file or the new, never a part.

    With `replace=False` an existing target is left alone and False is returned.
    The caller fsyncs the folder once after publishing everything that belongs together.
    """
    temp = write_temp(target.parent, target.name, data, mode)
    try:
        if replace:
            os.replace(temp, target)
            return True
        try:
            os.link(temp, target)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def link_or_copy_no_overwrite(source: Path, target: Path) -> None:
    """Put `source`'s content at `target` durably without overwriting; raise FileExistsError.

    Hard-links when both are on one filesystem; otherwise copies through an fsynced temp file.
    The source stays in place: the caller removes it once the target is durable.
    """
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    temp = target.parent / temp_name(target.name)
    try:
        _copy_fsynced(source, temp)
        os.link(temp, target)
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


def unique_name(directory: Path, name: str) -> Path:
    """`directory/name`, or `stem-2.ext`, `stem-3.ext`… for the first name not yet taken."""
    candidate = directory / name
    stem, dot, suffix = name.rpartition(".")
    if not stem:
        stem, dot, suffix = name, "", ""
    number = 2
    while os.path.lexists(candidate):
        candidate = directory / f"{stem}-{number}{dot}{suffix}"
        number += 1
    return candidate


def make_folders(root: Path, relative: Path) -> Path:
    """Create `root/relative` folder by folder, fsyncing each parent that gained an entry."""
    folder = root
    for part in relative.parts:
        child = folder / part
        try:
            child.mkdir(mode=0o750)
            fsync_dir(folder)
        except FileExistsError:
            pass
        folder = child
    return folder
