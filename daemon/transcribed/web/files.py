"""Sending a job's files: transcripts as downloads, the original as playable audio with byte
ranges (the player seeks with them). Each takes a descriptor `web_catalog` opened safely, reads
it with pread and closes it when the response is done or abandoned."""

import os
import re
from collections.abc import Iterator
from urllib.parse import quote

from starlette.responses import Response, StreamingResponse

_BLOCK = 256 * 1024
_NOT_PLAIN_ASCII = re.compile(r'[^\x20-\x7e]|["\\%;]')
TEXT_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
AUDIO_TYPES = {
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".mp4": "audio/mp4",
    ".aac": "audio/aac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".webm": "audio/webm",
    ".mka": "audio/x-matroska",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
}


def attachment(fd: int, name: str, media_type: str) -> Response:
    """The whole file as a download named `name` (never shown inline: no sniffing, no script)."""
    size = os.fstat(fd).st_size
    headers = {"Content-Disposition": _disposition(name), "Content-Length": str(size)}
    return StreamingResponse(_read_range(fd, 0, size), media_type=media_type, headers=headers)


def playable(fd: int, suffix: str, range_header: str | None) -> Response:
    """Audio for the page's player: the whole file, or the one byte range asked for."""
    size = os.fstat(fd).st_size
    media = AUDIO_TYPES.get(suffix.lower(), "application/octet-stream")
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": "inline"}
    wanted = _byte_range(range_header, size)
    if wanted is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(_read_range(fd, 0, size), media_type=media, headers=headers)
    start, end = wanted
    if start >= size:
        os.close(fd)
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(
        _read_range(fd, start, end + 1), status_code=206, media_type=media, headers=headers
    )


def _disposition(name: str) -> str:
    """`filename=` for old clients: printable ASCII only (a control character in a header
    makes the server drop the connection); `filename*` (RFC 5987): the real name in UTF-8,
    bytes that are not UTF-8 (surrogates from the file system) replaced by U+FFFD."""
    fallback = _NOT_PLAIN_ASCII.sub("_", name) or "transcript"
    real = "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(real, safe='')}"


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range of a `Range: bytes=a-b` header (a suffix `-n` too); None for the whole."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _dash, last = header[6:].strip().partition("-")
    try:
        if not first:
            length = int(last)
            return (max(0, size - length), size - 1) if length > 0 else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return start, start  # past the end: the caller answers 416
    return (start, min(end, size - 1)) if start <= end else None


def _read_range(fd: int, start: int, stop: int) -> Iterator[bytes]:
    """Bytes [start, stop) of an open file; closes it when done or abandoned."""
    try:
        offset = start
        while offset < stop:
            block = os.pread(fd, min(_BLOCK, stop - offset), offset)
            if not block:
                return
            offset += len(block)
            yield block
    finally:
        os.close(fd)
