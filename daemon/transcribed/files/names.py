"""Which inbox names are recordings, and how to show any name safely in logs."""

import os
import re
from pathlib import PurePosixPath

# Video containers are here for their sound: phone recorders write .3gp/.3g2, audiobook and
# dictation apps .m4b, meeting capture .mkv/.mov; only the audio stream is decoded.
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
        ".3gp",
        ".3g2",
        ".m4b",
        ".mkv",
        ".mov",
    }
)

# Names that writers use while a file is still being written or synced: never a finished file.
_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp")
_TEMP_PREFIXES = ("~", ".", "#")
_TEMP_INFIXES = (".syncthing.", ".goutputstream-")

REASON_SUFFIX = ".error.json"  # the reason file beside a quarantined original


def is_temporary_name(name: str) -> bool:
    """Dotfiles (rsync's `.name.XXXXXX`, our own work folder) and known temp-name patterns."""
    lower = name.lower()
    return (
        name.startswith(_TEMP_PREFIXES)
        or lower.endswith(_TEMP_SUFFIXES)
        or any(infix in lower for infix in _TEMP_INFIXES)
    )


def is_temporary_path(relpath: str) -> bool:
    """True when the path, or a folder on it, has a temp or hidden name: never looked at."""
    parts = PurePosixPath(relpath).parts
    return not parts or any(is_temporary_name(part) for part in parts)


def is_candidate(relpath: str) -> bool:
    """True when a path relative to the inbox may be a recording we should pick up."""
    return not is_temporary_path(relpath) and not_a_recording(relpath) is None


def not_a_recording(relpath: str) -> str | None:
    """Why a (non-temporary) file is not taken as a recording, or None when it may be one."""
    suffix = PurePosixPath(relpath).suffix.lower()
    if suffix in AUDIO_EXTENSIONS:
        return None
    if not suffix:
        return "not a recording: the name has no audio extension"
    return f"not a recording: {display_name(suffix)} is not an audio extension"


# Control characters, and the invisible ones that change how the text around them reads:
# bidirectional overrides and marks ("report_<U+202E>gpj.exe" shows as "report_exe.jpg")
# and the Unicode line and paragraph separators; bytes that are not UTF-8 (decoded as lone
# surrogates); and the backslash itself, which starts every escape: a name written with a
# literal "\xff" must not read as the name with that byte.
_UNPRINTABLE = re.compile(
    r"[\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\udc80-\udcff]"
)


def display_name(path: str | bytes) -> str:
    """A printable, one-line rendering of a file name that reads as it is, and as no other
    name does: invalid UTF-8, control characters, bidirectional controls and backslashes
    escaped."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return _UNPRINTABLE.sub(_escaped, raw.decode("utf-8", errors="surrogateescape"))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == ord("\\"):
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
