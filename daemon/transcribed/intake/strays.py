"""Files in the inbox that are not recordings (notes.txt, photo.jpg, a recorder's .dss):
each is logged once as `intake.ignored` with the reason, and left where it is.

"Once" is per file (device and inode under its name), not per look: rescans run every few
minutes for months. An entry is forgotten as soon as a full rescan no longer finds its file,
so the memory holds only what is in the inbox now.
"""

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from transcribed.files.names import AUDIO_EXTENSIONS, display_name, not_a_recording
from transcribed.logs import get_logger

log = get_logger(__name__)

_HINT = (
    "recordings are taken by their extension ("
    + ", ".join(sorted(AUDIO_EXTENSIONS))
    + "); rename a recording that has another, and move other files out of the inbox"
)


class Strays:
    """Sorts inbox paths into recordings and the rest; logs each of the rest once."""

    def __init__(self, inbox: Path) -> None:
        self._inbox = inbox
        self._logged: dict[str, tuple[int, int]] = {}  # relpath -> (st_dev, st_ino)

    def is_recording(self, relpath: str) -> bool:
        """True when `relpath` may be a recording; otherwise log it (once per file)."""
        reason = not_a_recording(relpath)
        if reason is None:
            return True
        try:
            info = os.stat(self._inbox / relpath, follow_symlinks=False)
        except OSError:  # gone already, or unreadable: nothing to say or remember
            self._logged.pop(relpath, None)
            return False
        identity = (info.st_dev, info.st_ino)
        if self._logged.get(relpath) != identity:
            self._logged[relpath] = identity
            if stat.S_ISLNK(info.st_mode):  # e.g. a symlinked folder: the truer reason
                reason = "symbolic link (never followed)"
            log.warning("intake.ignored", file=display_name(relpath), reason=reason, hint=_HINT)
        return False

    def recordings_among(self, relpaths: Iterable[str]) -> Iterator[str]:
        """The recordings among a full walk of the inbox; the others are logged once, and
        entries for files the walk no longer found are forgotten."""
        present: set[str] = set()
        for relpath in relpaths:
            if self.is_recording(relpath):
                yield relpath
            else:
                present.add(relpath)
        self._logged = {path: key for path, key in self._logged.items() if path in present}

    def __len__(self) -> int:
        """Files remembered (only those still in the inbox after a rescan)."""
        return len(self._logged)
