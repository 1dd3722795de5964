"""Headers that promise more than the file holds mark it unfinished; finished files pass."""

import os
import struct
from pathlib import Path

import pytest

from support.recordings import write_pyav, write_soundfile
from transcribed.intake.completeness import incomplete_reason


def _reason(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        return incomplete_reason(fd, info.st_size, info.st_mtime_ns)
    finally:
        os.close(fd)


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def finished(tmp_path: Path) -> dict[str, Path]:
    return {
        "wav": write_soundfile(tmp_path / "a.wav", 2, 16000, "PCM_16"),
        "ogg": write_soundfile(tmp_path / "a.ogg", 2, 16000, "VORBIS", "OGG"),
        "opus": write_soundfile(tmp_path / "a.opus", 2, 48000, "OPUS", "OGG"),
        "m4a": write_pyav(tmp_path / "a.m4a", 2, 16000, "aac", "ipod"),
        "flac": write_soundfile(tmp_path / "a.flac", 2, 16000, "PCM_16", "FLAC"),
    }


def test_finished_files_pass(finished: dict[str, Path]) -> None:
    assert {kind: _reason(path) for kind, path in finished.items()} == dict.fromkeys(finished)


@pytest.mark.parametrize("kind", ["wav", "ogg", "opus", "m4a"])
def test_a_cut_off_file_is_unfinished(finished: dict[str, Path], kind: str) -> None:
    assert "truncated" in (_reason(_cut(finished[kind], 0.7)) or "")


def test_an_unfinalized_wav_header_an_unended_ogg_and_zeros_are_unfinished(
    finished: dict[str, Path], tmp_path: Path
) -> None:
    wav = bytearray(finished["wav"].read_bytes())
    struct.pack_into("<I", wav, 4, 0)  # what a streaming writer leaves until it closes
    finished["wav"].write_bytes(bytes(wav))
    assert "not finalized" in (_reason(finished["wav"]) or "")
    ogg = bytearray(finished["ogg"].read_bytes())
    last = ogg.rfind(b"OggS")
    ogg[last + 5] &= ~0x04  # the stream has not ended: more pages to come
    finished["ogg"].write_bytes(bytes(ogg))
    assert "not ended" in (_reason(finished["ogg"]) or "")
    preallocated = tmp_path / "copying.mp3"
    preallocated.write_bytes(bytes(100_000))
    assert "zero bytes" in (_reason(preallocated) or "")


def test_mtime_zero_marks_an_interrupted_rsync_partial(finished: dict[str, Path]) -> None:
    os.utime(finished["flac"], ns=(0, 0))
    assert "rsync" in (_reason(finished["flac"]) or "")
