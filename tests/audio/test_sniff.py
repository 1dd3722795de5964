"""Why a file is not a recording, in the words of whoever dropped it: not ffmpeg's
"Invalid data found when processing input"."""

from pathlib import Path

import pytest

from transcribed.audio.formats import decode
from transcribed.errors import PermanentError

CASES = {
    "empty.mp3": (b"", "empty file (0 bytes)"),
    "notes.mp3": (b"Meeting notes\nBudget: later\n" * 20, "it looks like text"),
    "chinese.m4a": ("会议记录, 预算推迟。\n".encode() * 40, "it looks like text"),
    "scan.wav": (b"%PDF-1.7\n" + bytes(range(256)) * 8, "it looks like a PDF document"),
    "photo.ogg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "an image (JPEG)"),
    "page.webm": (b"<!DOCTYPE html><html><body>hi</body></html>", "a web page (HTML)"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_file_that_is_not_audio_is_named_for_what_it_is(name, tmp_path: Path) -> None:
    """The failure reason says what the file looks like."""
    data, words = CASES[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(PermanentError) as failed:
        decode(path, max_seconds=60)
    assert words in str(failed.value)
    assert "Invalid data" not in str(failed.value) and "Invalid argument" not in str(failed.value)


def test_unknown_bytes_keep_the_decoders_words_at_the_end(tmp_path: Path) -> None:
    """Random bytes: no guess, the decoder's own reason kept for whoever looks closer."""
    path = tmp_path / "noise.mp3"
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(8192)))
    with pytest.raises(PermanentError) as failed:
        decode(path, max_seconds=60)
    assert "not a readable audio file, or a damaged one (the decoder says:" in str(failed.value)
