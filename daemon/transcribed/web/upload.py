"""Uploads: a recording streamed from the page into an inbox folder, so the daemon never sees
half a file.

The bytes go to a hidden temp name (the daemon ignores dot names) in the chosen folder, are
fsynced, and only then get their real name by a hard link that never overwrites (a taken name
gets `-2`, `-3`…); the temp name is removed and the folder fsynced. Folders are entered one by
one without following symlinks, so a symlink planted in the shared inbox cannot redirect an
upload. The chosen folder must be one the config names; the file name is a plain name with an
audio extension, never a path.
"""

import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio

from transcribed.files.durable import fit_name
from transcribed.files.folders import link_free_name
from transcribed.files.names import display_name, is_candidate
from transcribed.logs import get_logger

log = get_logger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
UPLOAD_SUFFIX = ".upload"
_OUR_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.upload$", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadRefused(Exception):
    """An upload we will not take, with a sentence saying why (shown to the user)."""


class TooLarge(UploadRefused):
    """Over the configured size limit."""


@dataclass(frozen=True)
class Folder:
    """An inbox folder uploads may go to: '' is the inbox itself."""

    path: str

    @property
    def label(self) -> str:
        return self.path or "Inbox (top level)"


def upload_folders(rule_paths: list[str]) -> list[Folder]:
    """The inbox itself and each folder a [[folders]] rule names."""
    return [Folder(""), *(Folder(path) for path in dict.fromkeys(rule_paths))]


def checked_name(raw: str) -> str:
    """A file name from the browser, accepted only as a plain recording name."""
    name = raw.strip()
    if not name or "/" in name or "\\" in name or _CONTROL.search(name):
        raise UploadRefused("the file name must be a plain name, without folders")
    if name in (".", "..") or not is_candidate(name):
        raise UploadRefused(
            f"{display_name(name)} is not a recording the daemon takes (an audio extension such "
            "as .wav, .mp3, .m4a, .ogg or .flac, and no leading dot)"
        )
    stem, _dot, extension = name.rpartition(".")
    return fit_name(stem, f".{extension}", reserve=0)


async def receive(
    body: AsyncIterator[bytes], inbox: Path, folder: Folder, name: str, limit: int
) -> tuple[str, int]:
    """Write `body` into `inbox/folder` as `name` (or a free variant); return the inbox-relative
    path it got, and its size (the daemon may take the file the moment it is there). Raises
    TooLarge past `limit` bytes; leaves nothing behind on any failure."""
    folder_fd = await anyio.to_thread.run_sync(_open_folder, inbox, folder.path)
    temp = f".{fit_name(name, f'.{secrets.token_hex(4)}{UPLOAD_SUFFIX}', reserve=1)}"
    try:
        fd = os.open(temp, _NEW_FILE, 0o640, dir_fd=folder_fd)
        try:
            size = await _copy(body, fd, limit)
            final = await anyio.to_thread.run_sync(link_free_name, folder_fd, temp, name)
        finally:
            os.close(fd)
            _remove(temp, folder_fd)
    finally:
        os.close(folder_fd)
    return (str(PurePosixPath(folder.path) / final) if folder.path else final), size


async def _copy(body: AsyncIterator[bytes], fd: int, limit: int) -> int:
    """All of `body` into `fd`, fsynced; TooLarge as soon as it passes `limit` bytes,
    UploadRefused when there was nothing."""
    size = 0
    async for block in body:
        size += len(block)
        if size > limit:
            raise TooLarge(f"the file is larger than the {limit // (1024 * 1024)} MiB allowed")
        await anyio.to_thread.run_sync(_write_all, fd, block)
    if not size:  # in the inbox it would wait an hour as "still arriving", then fail
        raise UploadRefused("the file is empty: choose the recording itself")
    await anyio.to_thread.run_sync(os.fsync, fd)
    return size


def _open_folder(inbox: Path, relative: str) -> int:
    """The folder's descriptor, created where missing, reached without following symlinks."""
    fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in PurePosixPath(relative).parts:
            try:
                os.mkdir(part, 0o750, dir_fd=fd)
                os.fsync(fd)
            except FileExistsError:
                pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, block: bytes) -> None:
    view = memoryview(block)
    while view:
        view = view[os.write(fd, view) :]


def _remove(temp: str, folder_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):  # already linked in and removed
        os.unlink(temp, dir_fd=folder_fd)


def remove_stale_uploads(inbox: Path) -> int:
    """Temp files of uploads cut short by a crash of the page (our own pattern only, no symlink
    followed, the daemon's work folder left alone); returns how many went."""
    removed = 0
    for folder, subfolders, files in os.walk(inbox):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if _OUR_TEMP.match(name):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed
