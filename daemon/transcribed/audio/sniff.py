"""Why a file no decoder can open is not a recording, in the words of the person who dropped
it: "empty file", "it looks like text", "a PDF document" rather than ffmpeg's "Invalid data
found when processing input". Reads the first few KiB of the file only; runs in the decoder
child beside the decoders."""

import os
from pathlib import Path

_HEAD = 4096
# Magic numbers of the files people drop by mistake into an inbox of recordings.
_KINDS = (
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "an image (PNG)"),
    (b"\xff\xd8\xff", "an image (JPEG)"),
    (b"GIF8", "an image (GIF)"),
    (b"PK\x03\x04", "a ZIP archive (or a Word, Excel or OpenDocument file)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a Windows program"),
)
_TEXT_BYTES = frozenset(b"\t\n\r\f\b") | frozenset(range(0x20, 0x7F))


def not_audio_reason(path: Path, decoder_said: str) -> str:
    """One line for a file that no decoder could open; `decoder_said` is kept at the end for
    the rare case none of our words fit."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(_HEAD)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if size == 0:
        return "empty file (0 bytes): nothing was recorded, or the copy failed"
    if not any(head):
        return f"holds only zero bytes ({size} bytes): not a recording, or a failed copy"
    if (kind := _known_kind(head)) is not None:
        return f"not a readable audio file: it looks like {kind}"
    if _looks_like_text(head):
        return "not a readable audio file: it looks like text"
    return f"not a readable audio file, or a damaged one (the decoder says: {decoder_said})"


def _known_kind(head: bytes) -> str | None:
    for magic, kind in _KINDS:
        if head.startswith(magic):
            return kind
    lower = head.lstrip()[:64].lower()
    if lower.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML)"
    if lower.startswith(b"<?xml"):
        return "an XML document"
    return None


def _looks_like_text(head: bytes) -> bool:
    """Printable ASCII or valid UTF-8 throughout (a cut at the end of the sample allowed)."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a character cut in half at the end
            return all(byte in _TEXT_BYTES for byte in head)
    return all(byte in _TEXT_BYTES or byte >= 0x80 for byte in head)
