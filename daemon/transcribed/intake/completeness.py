"""Does a file look finished? Container headers that promise more than the file holds say no.

The settle window catches writers that are active; this catches writers that paused or died
half-way: an interrupted `rsync --partial` (final name, truncated body, mtime 0), a copy that
preallocated the full size and stalled, a recorder whose WAV header is not finalized yet.
Pure Python over a few bounded `pread`s of an already validated descriptor: no decoder
library sees the bytes here. Formats without a checkable header pass (settling still applies).
"""

import os
import struct

_PROBE = 4096
_TAIL = 1 << 16
_MAX_BOXES = 10_000
_UNSET_SIZES = (0, 0xFFFFFFFF)  # what streaming WAV writers put there until they finish


def incomplete_reason(fd: int, size: int, mtime_ns: int) -> str | None:
    """Why the file at `fd` is not finished yet, or None when nothing says so."""
    if size == 0:  # a recorder opened it and has not written yet: never a recording to take
        return "empty so far (still arriving)"
    if mtime_ns == 0:
        return "modification time is 0: an interrupted rsync --partial (touch it to take it)"
    head = os.pread(fd, _PROBE, 0)
    if head and not any(head):
        return "only zero bytes so far: preallocated and not written yet"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _riff(fd, head, size)
    if head[:4] == b"OggS":
        return _ogg(fd, size)
    if head[4:8] == b"ftyp":
        return _iso_boxes(fd, size)
    return None


def _riff(fd: int, head: bytes, size: int) -> str | None:
    (riff_size,) = struct.unpack_from("<I", head, 4)
    if riff_size in _UNSET_SIZES:
        return "WAV header not finalized yet (still recording?)"
    if riff_size + 8 > size:
        return f"truncated: the WAV header promises {riff_size + 8} bytes, the file has {size}"
    offset = 12
    for _ in range(_MAX_BOXES):
        header = os.pread(fd, 8, offset)
        if len(header) < 8:
            return "truncated: no WAV data chunk"
        chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"data":
            if chunk_size in _UNSET_SIZES:
                return "WAV data size not finalized yet (still recording?)"
            if offset + 8 + chunk_size > size:
                return f"truncated: WAV data promises {chunk_size} bytes past offset {offset + 8}"
            return None
        offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _ogg(fd: int, size: int) -> str | None:
    """The last page must be complete and carry the end-of-stream flag."""
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start)
    last = tail.rfind(b"OggS")
    if last < 0 or len(tail) - last < 27:
        return "truncated: the last Ogg page is cut off"
    page = tail[last:]
    segments = page[26]
    if len(page) < 27 + segments:
        return "truncated: the last Ogg page is cut off"
    body = sum(page[27 : 27 + segments])
    if len(page) < 27 + segments + body:
        return "truncated: the last Ogg page is cut off"
    if not page[5] & 0x04:
        return "the Ogg stream has not ended yet (no end-of-stream page)"
    return None


def _iso_boxes(fd: int, size: int) -> str | None:
    """MP4/M4A/MOV: top-level boxes must tile the file, and the index (moov) must be there."""
    offset, seen_moov = 0, False
    for _ in range(_MAX_BOXES):
        if offset == size:
            return None if seen_moov else "no moov box yet (the index is written last)"
        header = os.pread(fd, 16, offset)
        if len(header) < 8:
            return "truncated inside a box header"
        box_size, box_type = struct.unpack(">I", header[:4])[0], header[4:8]
        if box_size == 1 and len(header) == 16:
            box_size = struct.unpack(">Q", header[8:])[0]
        elif box_size == 0:  # "extends to the end of the file"
            box_size = size - offset
        if box_size < 8 or offset + box_size > size:
            return f"truncated: a {box_type.decode('latin-1')!r} box runs past the end of the file"
        seen_moov = seen_moov or box_type == b"moov"
        offset += box_size
    return None
