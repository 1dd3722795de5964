"""Real recordings of many formats, made on the fly (no binary fixtures in the repo)."""

from pathlib import Path

import av
import numpy as np
import soundfile as sf


def speechlike(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tone bursts separated by pauses: gives the chunker real quiet points to find."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = (np.sin(2 * np.pi * 0.4 * t) > -0.3).astype(np.float32)
    signal = 0.3 * np.sin(2 * np.pi * 180 * t) * envelope + 0.01 * rng.standard_normal(len(t))
    mono = signal.astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def write_soundfile(
    path: Path,
    seconds: float,
    rate: int,
    subtype: str | None = None,
    fmt: str | None = None,
    channels: int = 1,
    seed: int = 0,
    **extra: object,
) -> Path:
    samples = speechlike(seconds, rate, channels, seed)
    sf.write(path, samples, rate, subtype=subtype, format=fmt, **extra)
    return path


def write_pyav(
    path: Path,
    seconds: float,
    rate: int,
    codec: str,
    container: str | None = None,
    layout: str = "mono",
) -> Path:
    """Encode with ffmpeg (PyAV): the formats libsndfile cannot write (m4a, webm, …)."""
    samples = speechlike(seconds, rate)
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name
        for start in range(0, len(samples), frame_size):
            block = samples[start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(
                _as_format(_channels(block, fmt, layout), fmt), format=fmt, layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


def write_video_call(path: Path, seconds: float, container: str | None = None) -> Path:
    """A meeting capture: a small video stream first, then AAC sound (only it is decoded)."""
    rate, fps = 48000, 5
    samples = speechlike(seconds, rate)
    with av.open(str(path), "w", format=container) as output:
        video = output.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = output.add_stream("aac", rate=rate, layout="mono")
        for index in range(int(seconds * fps)):
            picture = np.full((48, 64, 3), index * 8 % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                output.mux(packet)
        for packet in video.encode(None):
            output.mux(packet)
        size, fmt = sound.codec_context.frame_size, sound.codec_context.format.name
        for start in range(0, len(samples), size):
            block = _as_format(_channels(samples[start : start + size], fmt, "mono"), fmt)
            audio = av.AudioFrame.from_ndarray(block, format=fmt, layout="mono")
            audio.sample_rate, audio.pts = rate, start
            for packet in sound.encode(audio):
                output.mux(packet)
        for packet in sound.encode(None):
            output.mux(packet)
    return path


def make_recorder_formats(folder: Path, seconds: float = 2.0) -> dict[str, float]:
    """Phone recorders', audiobook apps' and meeting captures' containers."""
    made = [
        write_pyav(folder / "phone memo.3gp", seconds, 8000, "libopencore_amrnb", "3gp"),
        write_pyav(folder / "aac memo.3gp", seconds, 16000, "aac", "3gp"),
        write_pyav(folder / "cdma memo.3g2", seconds, 16000, "aac", "3g2"),
        write_pyav(folder / "chapter.m4b", seconds, 44100, "aac", "ipod"),
        write_pyav(folder / "opus capture.mkv", seconds, 48000, "libopus", "matroska"),
        write_video_call(folder / "call.mov", seconds, "mov"),
        write_video_call(folder / "screen recording.mkv", seconds, "matroska"),
    ]
    return dict.fromkeys((path.name for path in made), seconds)


def _channels(block: np.ndarray, fmt: str, layout: str) -> np.ndarray:
    """The same signal on every channel, laid out as from_ndarray wants it: one row per
    channel for planar formats, one interleaved row for packed ones."""
    count = 2 if layout == "stereo" else 1
    if fmt.endswith("p"):
        return np.vstack([block] * count)
    return np.repeat(block, count).reshape(1, -1)


def _as_format(data: np.ndarray, fmt: str) -> np.ndarray:
    if fmt.startswith("s16"):
        return (data * 32767).astype(np.int16)
    if fmt.startswith("s32"):
        return (data * 2147483647).astype(np.int32)
    return data.astype(np.float32)


def make_mixed_recordings(folder: Path, seconds: float = 6.0) -> dict[str, float]:
    """Every format the daemon promises to read, with its true duration."""
    made = {
        "pcm16 mono 16k.wav": write_soundfile(
            folder / "pcm16 mono 16k.wav", seconds, 16000, "PCM_16"
        ),
        "pcm24 stereo 48k.wav": write_soundfile(
            folder / "pcm24 stereo 48k.wav", seconds, 48000, "PCM_24", channels=2
        ),
        "float 44k.wav": write_soundfile(folder / "float 44k.wav", seconds, 44100, "FLOAT"),
        "ulaw 8k.wav": write_soundfile(folder / "ulaw 8k.wav", seconds, 8000, "ULAW"),
        "会议记录.flac": write_soundfile(
            folder / "会议记录.flac", seconds, 22050, "PCM_16", "FLAC"
        ),
        "cbr.mp3": write_soundfile(
            folder / "cbr.mp3", seconds, 44100, "MPEG_LAYER_III", "MP3", bitrate_mode="CONSTANT"
        ),
        "vbr.mp3": write_soundfile(
            folder / "vbr.mp3", seconds, 32000, "MPEG_LAYER_III", "MP3", bitrate_mode="VARIABLE"
        ),
        "vorbis.ogg": write_soundfile(folder / "vorbis.ogg", seconds, 44100, "VORBIS", "OGG"),
        "voice.opus": write_soundfile(folder / "voice.opus", seconds, 48000, "OPUS", "OGG"),
        "aac.m4a": write_pyav(folder / "aac.m4a", seconds, 44100, "aac", "mp4"),
        "clip.webm": write_pyav(folder / "clip.webm", seconds, 48000, "libopus", "webm"),
        "stereo aac.m4a": write_pyav(
            folder / "stereo aac.m4a", seconds, 48000, "aac", "mp4", layout="stereo"
        ),
        "pcm s16 stereo.mka": write_pyav(
            folder / "pcm s16 stereo.mka", seconds, 44100, "pcm_s16le", "matroska", layout="stereo"
        ),
        "alac.m4a": write_pyav(folder / "alac.m4a", seconds, 44100, "alac", "mp4"),
    }
    return dict.fromkeys(made, seconds)


def make_unreadable(folder: Path) -> list[str]:
    """Files that fail for good. (An empty file is not one of them: it is still arriving.)"""
    (folder / "one byte.wav").write_bytes(b"x")
    (folder / "noise.flac").write_bytes(np.random.default_rng(1).bytes(50_000))
    (folder / "notes.mp3").write_text("these are meeting notes, not audio\n" * 40)
    return ["one byte.wav", "noise.flac", "notes.mp3"]
