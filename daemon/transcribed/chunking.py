"""Cutting long recordings at quiet points so no word is split and each piece fits the model."""

import numpy as np

_FRAME_SECONDS = 0.05
# Look for the cut in the last third of each window: pieces stay long (good for throughput and
# context) while there is room to find real silence.
_SEARCH_FRACTION = 1 / 3


def plan_chunks(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges that tile `audio`, each at most `max_seconds` long,
    cut at the quietest frame near the end of each window."""
    total = len(audio)
    window = int(max_seconds * sample_rate)
    if total <= window:
        return [(0, total)] if total else []
    frame = max(1, int(_FRAME_SECONDS * sample_rate))
    energy = _frame_energy(audio, frame)
    ranges: list[tuple[int, int]] = []
    start = 0
    while total - start > window:
        end = _quietest_cut(
            energy, frame, start + int(window * (1 - _SEARCH_FRACTION)), start + window
        )
        ranges.append((start, end))
        start = end
    ranges.append((start, total))
    return ranges


def _frame_energy(audio: np.ndarray, frame: int) -> np.ndarray:
    usable = len(audio) // frame * frame
    frames = audio[:usable].reshape(-1, frame)
    energy: np.ndarray = np.einsum("ij,ij->i", frames, frames, dtype=np.float64)
    return energy


def _quietest_cut(energy: np.ndarray, frame: int, lo: int, hi: int) -> int:
    first, last = lo // frame, max(lo // frame + 1, hi // frame)
    candidates = energy[first:last]
    if not len(candidates):
        return hi
    # Cut in the middle of the quietest frame; ties go to the latest (longest chunk).
    quiet = first + len(candidates) - 1 - int(np.argmin(candidates[::-1]))
    return min(hi, quiet * frame + frame // 2)
