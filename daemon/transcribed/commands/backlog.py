"""The benchmark's backlog: compressed recordings of mixed lengths, written once.

Ogg Vorbis at 48 kHz (what a recorder or a phone leaves), tone bursts with pauses so the
chunker finds quiet places to cut, lengths cycled from voice notes to lectures. Written one
process per core; a rerun in the same folder keeps what is already there. Imports no torch:
its worker processes start in a fraction of a second.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

SOURCE_RATE = 48_000
# Lengths cycled through to fill the backlog: meetings, voice notes, calls, lectures.
MIX_SECONDS = (45, 600, 120, 1500, 300, 30, 900, 180)


def write_backlog(folder: Path, hours: float) -> list[Path]:
    """Compressed recordings of mixed lengths totalling `hours`, one process per core; files
    an earlier run left in `folder` at the right length are kept (a rerun writes nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    remaining, plan = hours * 3600, []
    for index in range(10_000):
        if remaining <= 0:
            break
        seconds = min(MIX_SECONDS[index % len(MIX_SECONDS)], max(remaining, 10))
        plan.append((folder / f"recording-{index:03d}.ogg", seconds, index))
        remaining -= seconds
    missing = [item for item in plan if not _has_length(item[0], item[1])]
    if missing:
        # Spawned, not forked (the caller may hold threads); this module imports no torch.
        context = multiprocessing.get_context("spawn")
        workers = min(len(os.sched_getaffinity(0)), len(missing))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_recording, *zip(*missing, strict=True)))
    return [path for path, _seconds, _index in plan]


def _write_recording(path: Path, seconds: float, index: int) -> None:
    with soundfile.SoundFile(path, "w", SOURCE_RATE, 1, format="OGG", subtype="VORBIS") as out:
        # Small writes: libsndfile's Vorbis encoder crashes on very large ones.
        for start in range(0, int(seconds), 10):
            out.write(speechlike(min(10, seconds - start), seed=index * 1000 + start))


def _has_length(path: Path, seconds: float) -> bool:
    try:
        duration = float(soundfile.info(str(path)).duration)
    except (OSError, RuntimeError):  # missing, or a partial file from an interrupted run
        return False
    return abs(duration - seconds) < 0.5


def speechlike(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    envelope = np.sin(2 * np.pi * 0.4 * t) > -0.3
    pitch = 150 + 60 * np.sin(2 * np.pi * 0.7 * t)
    tone = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / SOURCE_RATE) * envelope
    return (tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
