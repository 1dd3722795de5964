"""Cutting long recordings at quiet points so no word is split and each piece fits the model."""

import numpy as np

_FRAME_SECONDS = 0.05
# Look for the cut in the last third of each window: pieces stay long (good for throughput and
# context) while there is room to find real silence.
_SEARCH_FRACTION = 1 / 3


def plan_chunks(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges that tile `audio`, each at most `max_seconds` long,
    cut at the quietest frame near the end of each window."""
    chunker = StreamChunker(sample_rate, max_seconds)
    pieces = chunker.feed(audio) + chunker.finish()
    return [(start, start + len(chunk)) for start, chunk in pieces]


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


class StreamChunker:
    """`plan_chunks` over audio that arrives block by block, holding at most one window plus
    one block: memory stays flat however long the recording is."""

    def __init__(self, sample_rate: int, max_seconds: float) -> None:
        self._rate = sample_rate
        self._window = int(max_seconds * sample_rate)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._offset = 0  # sample position of the buffer's start in the whole recording

    def feed(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add decoded samples; return the (start sample, chunk) pieces now final."""
        self._buffer = np.concatenate((self._buffer, block))
        ready = []
        while len(self._buffer) > self._window:
            ready.append(self._take(self._next_cut()))
        return ready

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The tail, once the recording has ended."""
        return [self._take(len(self._buffer))] if len(self._buffer) else []

    def _next_cut(self) -> int:
        frame = max(1, int(_FRAME_SECONDS * self._rate))
        energy = _frame_energy(self._buffer[: self._window], frame)
        lowest = int(self._window * (1 - _SEARCH_FRACTION))
        return _quietest_cut(energy, frame, lowest, self._window)

    def _take(self, length: int) -> tuple[int, np.ndarray]:
        piece = (self._offset, self._buffer[:length].copy())
        self._buffer = self._buffer[length:]
        self._offset += length
        return piece
