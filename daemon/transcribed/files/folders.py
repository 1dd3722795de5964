"""Folders below a root entered one component at a time through descriptors, never following a
symlink: anyone who can write to the shared inbox can plant one, and a path through it would
have the daemon (or an operator's command) read or write elsewhere with its rights. Working
from descriptors also reaches paths longer than PATH_MAX.
"""

import contextlib
import errno
import os
from pathlib import Path, PurePosixPath

from transcribed.files.durable import fit_name, take_name

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_below(root: Path, relative: str | PurePosixPath, *, create: bool = False) -> int:
    """A descriptor of `root/relative`, reached folder by folder without following a symlink
    (ELOOP or ENOTDIR where one is in the way); with `create`, missing folders are made
    (mode 0750, each parent fsynced). The caller closes it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in PurePosixPath(relative).parts:
            if create:
                _make_folder(part, fd)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_folder(name: str, parent_fd: int) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o750, dir_fd=parent_fd)
        os.fsync(parent_fd)


def stat_below(root: Path, relpath: str) -> os.stat_result:
    """lstat of `root/relpath`; a path longer than PATH_MAX is reached folder by folder."""
    try:
        return os.stat(root / relpath, follow_symlinks=False)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
    path = PurePosixPath(relpath)
    parent_fd = open_below(root, path.parent)
    try:
        return os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
    finally:
        os.close(parent_fd)


def link_free_name(folder_fd: int, temp: str, name: str, temp_dir_fd: int | None = None) -> str:
    """Give the finished file `temp` the name `name`, or `stem-2.ext`… for the first free one,
    never replacing a file; the temp name is removed and the folder fsynced. Returns the name.
    `temp` is in the folder `temp_dir_fd` when given (on the same filesystem)."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    number = 1
    while True:
        suffix = f".{extension}" if dot else ""
        candidate = name if number == 1 else fit_name(stem, f"-{number}{suffix}")
        if not take_name(temp, candidate, folder_fd, temp_dir_fd):
            number += 1
            continue
        os.fsync(folder_fd)
        return candidate
