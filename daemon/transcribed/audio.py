"""Decoding untrusted recordings to 16 kHz mono float32. Runs inside the decoder child process.

soundfile (libsndfile) first: fast and strict for WAV/FLAC/OGG/MP3. PyAV (ffmpeg) for the
containers libsndfile lacks, restricted to audio demuxers and the local file protocol so a
crafted playlist or concat list cannot make ffmpeg read other files or the network.
The duration cap is enforced on decoded samples, never trusted from headers.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from transcribed.errors import PermanentError

SAMPLE_RATE = 16_000
_BLOCK_FRAMES = 1 << 16

# ffmpeg demuxers for the audio formats we accept; playlists (hls, concat, …) are not here.
AUDIO_DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aac,amr,amrnb,amrwb,asf,aiff,caf,au"
)


def decode(path: Path, max_seconds: float) -> np.ndarray:
    """The whole recording as 16 kHz mono float32; PermanentError when it is not usable audio."""
    return np.concatenate([np.zeros(0, np.float32), *decode_blocks(path, max_seconds)])


def decode_blocks(path: Path, max_seconds: float) -> Iterator[np.ndarray]:
    """The recording as consecutive 16 kHz mono float32 blocks of a few seconds each.

    PermanentError when it is not usable audio (possibly after some blocks: a corrupt tail).
    """
    try:
        source = _soundfile_blocks(path)
        first = next(source, None)
    except RuntimeError:  # LibsndfileError and friends: not a format libsndfile can read
        source, first = _pyav_blocks(path), None
    else:
        source = itertools.chain([first], source) if first is not None else iter(())
    produced = False
    for block in _resampled(source, max_seconds):
        produced = produced or block.size > 0
        yield block
    if not produced:
        raise PermanentError("no audio samples could be decoded")


def claimed_seconds(path: Path) -> float | None:
    """The length the file's header claims, or None: for progress display only (a header
    may lie; the duration cap counts decoded samples)."""
    try:
        with soundfile.SoundFile(path) as source:
            return source.frames / source.samplerate if source.frames > 0 else None
    except (RuntimeError, OSError, ValueError, ZeroDivisionError):
        pass
    try:
        import av

        options = {"protocol_whitelist": "file", "format_whitelist": AUDIO_DEMUXERS}
        with av.open(str(path), mode="r", options=options, timeout=30.0) as container:
            duration = container.duration  # microseconds
            return duration / 1_000_000 if duration and duration > 0 else None
    except Exception:  # any failure here only means "no progress figure"
        return None


def _resampled(
    blocks: Iterator[tuple[np.ndarray, int]], max_seconds: float
) -> Iterator[np.ndarray]:
    """Downmix and resample block by block, failing as soon as the cap is passed."""
    resampler: soxr.ResampleStream | None = None
    decoded_seconds = 0.0
    try:
        for block, rate in blocks:
            if resampler is None:
                resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            decoded_seconds += len(block) / rate
            if decoded_seconds > max_seconds:
                raise PermanentError(f"longer than max_duration_seconds ({max_seconds:.0f} s)")
            yield resampler.resample_chunk(_mono(block))
    except RuntimeError as error:  # libsndfile failing mid-file: a corrupt or cut-off body
        raise PermanentError(f"corrupt audio ({_short(error)})") from None
    if resampler is not None:
        yield resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def _mono(block: np.ndarray) -> np.ndarray:
    mono = block.mean(axis=1) if block.ndim == 2 else block
    return np.ascontiguousarray(mono, dtype=np.float32)


def _soundfile_blocks(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    with soundfile.SoundFile(path) as source:
        rate = source.samplerate
        while True:
            block = source.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block, rate


def _pyav_blocks(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    import av  # only in the child; keeps ffmpeg out of the daemon process

    options = {"protocol_whitelist": "file", "format_whitelist": AUDIO_DEMUXERS}
    try:
        container = av.open(str(path), mode="r", options=options, timeout=30.0)
    except (av.error.FFmpegError, ValueError) as error:
        raise PermanentError(f"not a readable audio file ({_short(error)})") from None
    with container:
        if not container.streams.audio:
            raise PermanentError("the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate or None)
        try:
            for frame in container.decode(stream):
                for converted in resampler.resample(frame):
                    yield converted.to_ndarray().reshape(-1), converted.sample_rate
        except av.error.FFmpegError as error:
            raise PermanentError(f"corrupt audio ({_short(error)})") from None


def _short(error: Exception) -> str:
    # FFmpeg errors end with the (internal work-folder) file name; keep only the reason.
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return str(reason)[:200]
