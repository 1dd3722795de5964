"""Which inbox names are recordings, and how to show any name safely in logs."""

import os
import re
from pathlib import PurePosixPath

AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".mp3",
        ".m4a",
        ".aac",
        ".mp4",
        ".ogg",
        ".oga",
        ".opus",
        ".webm",
        ".amr",
        ".wma",
        ".aiff",
        ".aif",
        ".caf",
        ".mka",
    }
)

# Names that writers use while a file is still being written or synced: never a finished file.
_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp")
_TEMP_PREFIXES = ("~", ".", "#")
_TEMP_INFIXES = (".syncthing.", ".goutputstream-")


def is_temporary_name(name: str) -> bool:
    """Dotfiles (rsync's `.name.XXXXXX`, our own work folder) and known temp-name patterns."""
    lower = name.lower()
    return (
        name.startswith(_TEMP_PREFIXES)
        or lower.endswith(_TEMP_SUFFIXES)
        or any(infix in lower for infix in _TEMP_INFIXES)
    )


def is_candidate(relpath: str) -> bool:
    """True when a path relative to the inbox may be a recording we should pick up."""
    parts = PurePosixPath(relpath).parts
    if not parts or any(is_temporary_name(part) for part in parts):
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in AUDIO_EXTENSIONS


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def display_name(path: str | bytes) -> str:
    """A printable, one-line rendering of a file name: invalid UTF-8 and control chars escaped."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    text = raw.decode("utf-8", errors="backslashreplace")
    return _UNPRINTABLE.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
