"""Decoding every promised format in the child process, with caps and clear failures."""

import os
from pathlib import Path

import numpy as np
import pytest

from support.recordings import (
    make_mixed_recordings,
    make_recorder_formats,
    make_unreadable,
    write_pyav,
    write_soundfile,
)
from transcribed.audio.decoder import ChildDecoder
from transcribed.audio.formats import SAMPLE_RATE, decode
from transcribed.errors import DecoderCrashed, PermanentError


@pytest.fixture(scope="module")
def decoder():
    child = ChildDecoder(timeout_seconds=60, memory_bytes=4 << 30, max_seconds=3600)
    yield child
    child.close()


def test_every_format_decodes_to_16k_mono_of_the_right_length(tmp_path, decoder) -> None:
    for name, seconds in make_mixed_recordings(tmp_path).items():
        audio = decoder.decode(tmp_path / name)
        assert audio.dtype == np.float32 and audio.ndim == 1, name
        assert abs(len(audio) / SAMPLE_RATE - seconds) / seconds < 0.03, name
        assert 0.05 < float(np.abs(audio).max()) <= 1.01, name  # real signal, not silence


def test_recorder_and_meeting_formats_decode_through_the_child(tmp_path, decoder) -> None:
    """.3gp (AMR-NB and AAC), .3g2, .m4b, .mkv and .mov, video streams included: the
    audio demuxers the decoder is restricted to read them all."""
    for name, seconds in make_recorder_formats(tmp_path).items():
        audio = decoder.decode(tmp_path / name)
        assert abs(len(audio) / SAMPLE_RATE - seconds) / seconds < 0.03, name
        assert 0.05 < float(np.abs(audio).max()) <= 1.01, name


def test_ffmpeg_and_libsndfile_give_the_same_samples_for_the_same_signal(tmp_path) -> None:
    """Interleaved 16-bit stereo through ffmpeg's FIFO path and float mono through
    libsndfile: same downmix, same scaling, same resampler, so the same 16 kHz samples."""
    through_ffmpeg = decode(
        write_pyav(tmp_path / "s16.mka", 6, 44100, "pcm_s16le", "matroska", layout="stereo"), 100
    )
    through_libsndfile = decode(write_soundfile(tmp_path / "f.wav", 6, 44100, "FLOAT"), 100)
    assert len(through_ffmpeg) == len(through_libsndfile) == 6 * SAMPLE_RATE
    assert float(np.abs(through_ffmpeg - through_libsndfile).max()) < 1e-3  # 16-bit rounding


def test_unreadable_files_fail_permanently_with_a_reason(tmp_path, decoder) -> None:
    for name in make_unreadable(tmp_path):
        with pytest.raises(PermanentError) as caught:
            decoder.decode(tmp_path / name)
        assert str(caught.value) and str(tmp_path) not in str(caught.value)


def test_the_duration_cap_is_enforced_while_decoding(tmp_path) -> None:
    path = write_soundfile(tmp_path / "long.flac", 20, 16000, "PCM_16", "FLAC")
    with pytest.raises(PermanentError, match="longer than max_duration_seconds"):
        decode(path, max_seconds=10)


def test_a_playlist_pointing_at_another_file_is_refused(tmp_path) -> None:
    secret = write_soundfile(tmp_path / "secret.wav", 2, 16000, "PCM_16")
    (tmp_path / "list.mp3").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{secret}\n#EXT-X-ENDLIST\n"
    )
    (tmp_path / "concat.mp3").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    for name in ("list.mp3", "concat.mp3"):
        with pytest.raises(PermanentError):
            decode(tmp_path / name, max_seconds=100)


def test_a_decoder_that_dies_is_reported_and_replaced(tmp_path, decoder) -> None:
    decoder._ensure_child()
    assert decoder._process is not None
    os.kill(decoder._process.pid, 9)
    decoder._process.join(5)
    path = write_soundfile(tmp_path / "ok.wav", 1, 16000, "PCM_16")
    # A dead child is noticed before sending; the next decode gets a fresh child.
    assert len(decoder.decode(path)) == SAMPLE_RATE


def test_a_decode_that_runs_past_the_time_limit_kills_the_child(tmp_path) -> None:
    os.mkfifo(tmp_path / "hang.wav")  # opening a FIFO for reading blocks: a stand-in for a hang
    child = ChildDecoder(timeout_seconds=2, memory_bytes=1 << 30, max_seconds=100)
    try:
        with pytest.raises(DecoderCrashed, match="no progress for 2 s"):
            child.decode(Path(tmp_path / "hang.wav"))
        assert child._process is None
    finally:
        child.close()


def _float_wav_with(path: Path, damage: dict[int, float], seconds: float = 6.0) -> Path:
    from support.recordings import speechlike

    samples = speechlike(seconds, 44100)
    for index, value in damage.items():
        samples[index] = value
    import soundfile as sf

    sf.write(path, samples, 44100, subtype="FLOAT")
    return path


def test_nan_and_infinite_samples_are_repaired_and_counted(tmp_path, decoder) -> None:
    """Finding 7: one NaN would spread through the resampler and silence a whole chunk."""
    damage = {1000: np.nan, 90_000: np.inf, 150_000: -np.inf, 200_000: 1e30}
    audio = decoder.decode(_float_wav_with(tmp_path / "damaged.wav", damage))
    assert np.isfinite(audio).all() and float(np.abs(audio).max()) < 2
    assert decoder.repaired_samples == 4
    # Absurd alone, though its square still fits a float (a check for overflow missed it).
    loud = decoder.decode(_float_wav_with(tmp_path / "loud.wav", {240_000: 1e15}))
    assert float(np.abs(loud).max()) < 2 and decoder.repaired_samples == 1
    second = audio[SAMPLE_RATE : 2 * SAMPLE_RATE]  # speech around the damage is still there
    assert float(np.sqrt(np.mean(second**2))) > 0.05


def test_float_audio_that_is_mostly_damage_fails_with_a_reason(tmp_path, decoder) -> None:
    damage = dict.fromkeys(range(0, 264_600, 10), np.nan)  # every tenth sample
    with pytest.raises(PermanentError, match="NaN, infinite or absurdly large"):
        decoder.decode(_float_wav_with(tmp_path / "garbage.wav", damage))


def test_a_name_that_is_not_utf8_decodes_with_either_library(tmp_path, decoder) -> None:
    """An adversary's finding: `transcribe caf\\xe9.wav` failed ("surrogates not allowed"):
    libsndfile and FFmpeg take UTF-8 text, and a Linux name may be any bytes."""
    made = {
        "flac": write_soundfile(tmp_path / "a.flac", 2, 16000, "PCM_16", "FLAC"),
        "m4a": write_pyav(tmp_path / "a.m4a", 2, 16000, "aac"),
    }
    for suffix, path in made.items():
        odd = Path(os.fsdecode(b"caf\xe9-" + suffix.encode() + b"." + suffix.encode()))
        path.rename(tmp_path / odd)
        audio = decoder.decode(tmp_path / odd)
        assert abs(len(audio) / SAMPLE_RATE - 2) < 0.1, suffix
