"""Cutting long recordings at quiet points so no word is split and each piece fits the model."""

import numpy as np

_FRAME_SECONDS = 0.05
# Look for the cut in the last third of each window: pieces stay long (good for throughput and
# context) while there is room to find real silence.
_SEARCH_FRACTION = 1 / 3
# A pause this long ends a chunk early: a natural boundary for the model, and where the .txt
# starts a new paragraph. Chunks cut there are at least _MIN_CHUNK_SECONDS long.
LONG_PAUSE_SECONDS = 2.0
_MIN_CHUNK_SECONDS = 5.0
# Quiet means below a tenth (-20 dB) of the loud frames' level, or below -60 dBFS (digital
# silence, a muted microphone) whatever the level around it. Shared with pauses and pipeline.
RELATIVE_QUIET = 0.1
SILENCE_RMS = 1e-3
# A change of speaker (from the diarizer) ends a chunk too, when there is quiet within this
# distance of it (a cut must not split a word), and the chunk is at least this long.
TURN_SEARCH_SECONDS = 0.3
_MIN_TURN_CHUNK_SECONDS = 0.5


def plan_chunks(audio: np.ndarray, sample_rate: int, max_seconds: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges that tile `audio`, each at most `max_seconds` long,
    cut at the quietest frame near the end of each window."""
    chunker = StreamChunker(sample_rate, max_seconds)
    pieces = chunker.feed(audio) + chunker.finish()
    return [(start, start + len(chunk)) for start, chunk in pieces]


def frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS level of each whole `frame`-sample frame of `audio`."""
    usable = len(audio) // frame * frame
    frames = audio[:usable].reshape(-1, frame)
    energy: np.ndarray = np.einsum("ij,ij->i", frames, frames, dtype=np.float64)
    return np.sqrt(energy / frame)


def quiet_threshold(rms: np.ndarray) -> float:
    """The level below which a frame of this stretch of audio counts as quiet."""
    return max(SILENCE_RMS, RELATIVE_QUIET * float(np.percentile(rms, 90)))


def _first_long_pause(rms: np.ndarray, frame: int, rate: int) -> int | None:
    """The sample in the middle of the first run of quiet frames at least LONG_PAUSE_SECONDS
    long that starts after _MIN_CHUNK_SECONDS and ends before the window does."""
    if not len(rms):
        return None
    quiet = np.concatenate([[False], rms < quiet_threshold(rms), [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # runs of quiet frames: [start, end)
    needed = LONG_PAUSE_SECONDS * rate / frame
    earliest = _MIN_CHUNK_SECONDS * rate / frame
    for start, end in zip(starts, ends, strict=True):
        if end - start >= needed and start >= earliest and end < len(rms):
            return int((start + end) // 2 * frame)
    return None


def _quietest_cut(rms: np.ndarray, frame: int, lo: int, hi: int) -> int:
    first, last = lo // frame, max(lo // frame + 1, hi // frame)
    candidates = rms[first:last]
    if not len(candidates):
        return hi
    # Cut in the middle of the quietest frame; ties go to the latest (longest chunk).
    quiet = first + len(candidates) - 1 - int(np.argmin(candidates[::-1]))
    return min(hi, quiet * frame + frame // 2)


def _quiet_cut_near(
    rms: np.ndarray, frame: int, at: int, reach: int, threshold: float
) -> int | None:
    """The middle of the quietest frame within `reach` samples of `at`, if it is quiet."""
    first, last = max(0, (at - reach) // frame), min(len(rms), (at + reach) // frame + 1)
    if first >= last:
        return None
    quietest = first + int(np.argmin(rms[first:last]))
    return quietest * frame + frame // 2 if rms[quietest] < threshold else None


class StreamChunker:
    """`plan_chunks` over audio that arrives block by block, holding at most one window plus
    one block: memory stays flat however long the recording is. Changes of speaker, when
    given, end chunks where there is quiet near them."""

    def __init__(self, sample_rate: int, max_seconds: float) -> None:
        self._rate = sample_rate
        self._window = int(max_seconds * sample_rate)
        # Blocks not yet cut into chunks. Joined only when a cut is due (once per chunk,
        # not once per block: re-copying the window for every block cost more than decoding).
        self._blocks: list[np.ndarray] = []
        self._buffered = 0
        self._offset = 0  # sample position of the first buffered sample in the whole recording
        self._turns: list[int] = []  # changes of speaker (sample positions) not yet passed

    @property
    def buffered_samples(self) -> int:
        """Samples held, waiting for the next cut."""
        return self._buffered

    def feed(
        self, block: np.ndarray, turns: list[int] | None = None
    ) -> list[tuple[int, np.ndarray]]:
        """Add decoded samples, and changes of speaker (sample positions in the recording,
        in order); return the (start sample, chunk) pieces now final."""
        self._turns += turns or []
        self._blocks.append(block)
        self._buffered += len(block)
        if self._buffered <= self._window:
            return []
        return self._cut(final=False)

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The rest, once the recording has ended."""
        return self._cut(final=True)

    def _cut(self, final: bool) -> list[tuple[int, np.ndarray]]:
        buffer = np.concatenate(self._blocks) if len(self._blocks) != 1 else self._blocks[0]
        ready = []
        while (cut := self._next_cut(buffer, final)) is not None:
            ready.append((self._offset, buffer[:cut].copy()))
            buffer = buffer[cut:]
            self._offset += cut
        self._blocks, self._buffered = ([buffer] if len(buffer) else []), len(buffer)
        self._turns = [turn for turn in self._turns if turn > self._offset]
        return ready

    def _next_cut(self, buffer: np.ndarray, final: bool) -> int | None:
        """Where the next chunk ends: in the middle of the first long pause or at the first
        change of speaker with quiet near it, whichever comes first; else, when the buffer is
        longer than a window, at the quietest point of the window's last third."""
        if not len(buffer) or (not final and len(buffer) <= self._window):
            return None
        frame = max(1, int(_FRAME_SECONDS * self._rate))
        rms = frame_rms(buffer[: self._window], frame)
        natural = [
            cut
            for cut in (_first_long_pause(rms, frame, self._rate), self._turn_cut(rms, frame))
            if cut is not None
        ]
        if natural:
            return min(natural)
        if len(buffer) <= self._window:
            return len(buffer)  # final: the tail is one chunk
        lowest = int(self._window * (1 - _SEARCH_FRACTION))
        return _quietest_cut(rms, frame, lowest, self._window)

    def _turn_cut(self, rms: np.ndarray, frame: int) -> int | None:
        """Where to cut for the first change of speaker in the window that has quiet near it
        and leaves a chunk long enough before it (buffer positions)."""
        if not self._turns or not len(rms):
            return None
        threshold = quiet_threshold(rms)
        reach = int(TURN_SEARCH_SECONDS * self._rate)
        shortest = int(_MIN_TURN_CHUNK_SECONDS * self._rate)
        for turn in self._turns:
            at = turn - self._offset
            if at >= len(rms) * frame:
                break
            cut = _quiet_cut_near(rms, frame, at, reach, threshold)
            if cut is not None and cut >= shortest:
                return cut
        return None
