"""Decoding untrusted recordings to 16 kHz mono float32. Runs inside the decoder child process.

Uncompressed and lossless files (WAV, FLAC, AIFF, …) go through soundfile (libsndfile): fast
and strict. Everything else (Ogg Vorbis/Opus, MP3, M4A, WebM, …) goes through PyAV (ffmpeg),
whose Vorbis decoder is 1.8x as fast as libsndfile's (measured), restricted to audio
demuxers and the local file protocol so a crafted playlist or concat list cannot make ffmpeg
read other files or the network. Both paths downmix and resample with the same soxr stream.
The duration cap is enforced on decoded samples, never trusted from headers.
"""

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile
import soxr

from transcribed.audio.sniff import not_audio_reason
from transcribed.errors import PermanentError

if TYPE_CHECKING:
    import av

SAMPLE_RATE = 16_000
# Samples (at the source rate) handed on together: large enough that per-block work in Python
# costs nothing next to decoding, small enough (~1.4 s at 48 kHz) that memory stays flat.
_BLOCK_FRAMES = 1 << 16

# Formats libsndfile decodes without a lossy codec; for these it is as fast as ffmpeg.
_SOUNDFILE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "CAF", "AU"})

# ffmpeg demuxers for the audio formats we accept; playlists (hls, concat, …) are not here.
AUDIO_DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aac,amr,amrnb,amrwb,asf,aiff,caf,au"
)
_PYAV_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": AUDIO_DEMUXERS}

# A block of samples at the source rate: (frames,) mono or (frames, channels), and the rate.
RawBlock = tuple[np.ndarray, int]


@dataclass
class Source:
    """An opened recording: the length its header claims (progress display only: a header
    may lie) and its samples at the source rate, read as they are iterated."""

    claimed_seconds: float | None
    blocks: Iterator[RawBlock]


def decode(path: Path, max_seconds: float) -> np.ndarray:
    """The whole recording as 16 kHz mono float32; PermanentError when it is not usable audio."""
    return np.concatenate([np.zeros(0, np.float32), *decode_blocks(path, max_seconds)])


def decode_blocks(path: Path, max_seconds: float) -> Iterator[np.ndarray]:
    """The recording as consecutive 16 kHz mono float32 blocks of a few seconds each.

    PermanentError when it is not usable audio (possibly after some blocks: a corrupt tail).
    """
    return to_16k_mono(open_source(path).blocks, max_seconds)


def open_source(path: Path) -> Source:
    """Open `path` with the decoder suited to its format; PermanentError when neither can."""
    with _reachable(path) as name:
        try:
            opened = soundfile.SoundFile(name)
        except RuntimeError:  # LibsndfileError and friends: not a format libsndfile can read
            return _open_with_pyav(path, name)
        if opened.format not in _SOUNDFILE_FORMATS:
            opened.close()
            return _open_with_pyav(path, name)
    claimed = opened.frames / opened.samplerate if opened.frames > 0 else None
    return Source(claimed, _soundfile_blocks(opened))


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """`path` as libsndfile and FFmpeg can open it. They take UTF-8 text, and a Linux name
    may be any bytes (a file copied from an old Windows share: "caf\xe9.wav"): such a name is
    reached through an open descriptor's /proc/self/fd entry, which each opens for itself."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        yield str(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise PermanentError(f"cannot be read ({error.strerror})") from None
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def to_16k_mono(
    blocks: Iterator[RawBlock], max_seconds: float, repairs: "Repairs | None" = None
) -> Iterator[np.ndarray]:
    """Downmix, repair and resample block by block, failing as soon as the cap is passed, or
    at the end when not one sample was decoded. `repairs` counts the samples repaired."""
    repairs = repairs if repairs is not None else Repairs()
    resampler: soxr.ResampleStream | None = None
    source_rate = 0
    decoded_seconds = 0.0
    try:
        for block, rate in blocks:
            if resampler is not None and rate != source_rate:  # a stream changing its rate
                yield _flush(resampler)
            if resampler is None or rate != source_rate:
                resampler, source_rate = _resampler(rate), rate
            decoded_seconds += len(block) / rate
            if decoded_seconds > max_seconds:
                raise PermanentError(f"longer than max_duration_seconds ({max_seconds:.0f} s)")
            yield resampler.resample_chunk(repairs.repair(_mono(block)))
    except RuntimeError as error:  # libsndfile failing mid-file: a corrupt or cut-off body
        raise PermanentError(f"corrupt audio ({_short(error)})") from None
    if resampler is None or decoded_seconds == 0:
        raise PermanentError("no audio samples could be decoded")
    yield _flush(resampler)


# Float samples beyond this are not sound but damage; their squares still fit in float32, so
# no level computation downstream overflows. (Nominal full scale is 1.0.)
SAMPLE_LIMIT = 1e6
# More damaged samples than this share means the file is not audio worth transcribing.
MAX_REPAIRED_SHARE = 0.01


class Repairs:
    """Float recordings can hold NaN or infinite samples (a broken encoder, a bad sector).
    One of them would spread through the resampler's filter and turn a whole chunk into NaN,
    which reads as silence: speech lost without a word. Such samples, and absurd values
    beyond SAMPLE_LIMIT, become 0; a file with too many fails with a reason instead."""

    def __init__(self) -> None:
        self.repaired = 0
        self.seen = 0

    def repair(self, mono: np.ndarray) -> np.ndarray:
        self.seen += len(mono)
        # One pass, and NaN compares false: a NaN or a too-large sample takes the repair.
        if np.abs(mono).max(initial=0.0) <= SAMPLE_LIMIT:
            return mono
        bad = ~np.isfinite(mono) | (np.abs(mono) > SAMPLE_LIMIT)
        self.repaired += int(bad.sum())
        if self.repaired > MAX_REPAIRED_SHARE * self.seen:
            raise PermanentError(
                f"{self.repaired} of the first {self.seen} samples are NaN, infinite or "
                "absurdly large: the float audio is damaged"
            )
        return np.where(bad, np.float32(0), mono)


def _resampler(rate: int) -> soxr.ResampleStream:
    return soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")


def _flush(resampler: soxr.ResampleStream) -> np.ndarray:
    flushed: np.ndarray = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
    return flushed


def _mono(block: np.ndarray) -> np.ndarray:
    mono = block.mean(axis=1) if block.ndim == 2 else block
    return np.ascontiguousarray(mono, dtype=np.float32)


def _soundfile_blocks(opened: soundfile.SoundFile) -> Iterator[RawBlock]:
    with opened:
        rate = opened.samplerate
        while True:
            block = opened.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block, rate


def _open_with_pyav(path: Path, name: str) -> Source:
    """`name`: how FFmpeg reaches `path` (`_reachable`)."""
    import av  # only in the child; keeps ffmpeg out of the daemon process

    try:
        container = av.open(name, mode="r", options=_PYAV_OPTIONS, timeout=30.0)
    except (av.error.FFmpegError, ValueError) as error:
        raise PermanentError(not_audio_reason(path, _short(error))) from None
    if not container.streams.audio:
        container.close()
        raise PermanentError("the file has no audio stream")
    duration = container.duration  # microseconds
    claimed = duration / 1_000_000 if duration and duration > 0 else None
    return Source(claimed, _pyav_blocks(container))


def _pyav_blocks(container: Any) -> Iterator[RawBlock]:
    """Frames gathered into blocks of about _BLOCK_FRAMES samples by ffmpeg's own FIFO:
    its frames hold ~1k samples, and per-frame work in Python would cost more than the
    decoding (measured: 20% more per hour of Vorbis than one read per block)."""
    import av

    with container:
        fifo, shape = av.AudioFifo(), None
        try:
            for frame in container.decode(container.streams.audio[0]):
                this_shape = (frame.format.name, frame.layout.name, frame.sample_rate)
                if this_shape != shape and fifo.samples:  # a stream that changes format
                    yield _emptied(fifo)
                    fifo = av.AudioFifo()
                shape = this_shape
                frame.pts = None  # the FIFO checks timestamps are contiguous; we do not care
                fifo.write(frame)
                if fifo.samples >= _BLOCK_FRAMES:
                    yield _emptied(fifo)
        except av.error.FFmpegError as error:
            raise PermanentError(f"corrupt audio ({_short(error)})") from None
        if fifo.samples:
            yield _emptied(fifo)


def _emptied(fifo: "av.AudioFifo") -> RawBlock:
    """Everything in `fifo` (which holds samples) as one block."""
    frame = fifo.read()
    assert frame is not None
    samples = frame.to_ndarray()
    mono = _as_float_mono(samples, frame.format.is_planar, len(frame.layout.channels))
    return mono, frame.sample_rate


def _as_float_mono(samples: np.ndarray, planar: bool, channels: int) -> np.ndarray:
    """to_ndarray's (channels, n) planar or (1, n·channels) packed samples as mono float32,
    integers scaled to ±1."""
    if samples.dtype == np.float32 and channels == 1:
        return samples.reshape(-1)  # what Vorbis, Opus, MP3 and AAC decoders give: no copy
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        middle = (int(info.max) + int(info.min) + 1) / 2  # 128 for unsigned 8-bit, else 0
        scaled = (samples.astype(np.float32) - middle) / (int(info.max) + 1 - middle)
    else:
        scaled = samples.astype(np.float32)
    by_channel = scaled if planar else scaled.reshape(-1, channels).T
    return np.ascontiguousarray(by_channel.mean(axis=0, dtype=np.float32))


def _short(error: Exception) -> str:
    # FFmpeg errors end with the (internal work-folder) file name; keep only the reason.
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return str(reason)[:200]
