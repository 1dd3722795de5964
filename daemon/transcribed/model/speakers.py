"""Who speaks when: a diarizer's frame-by-frame speaker activity turned into segment labels.

The diarizer (`diarizer.Diarizer` in production) gives, for every 10 ms frame of a recording,
each of its speaker slots' probability of talking; a slot keeps its speaker through the
recording. `SpeakerTrack` sits between the decoder and the chunker:
- it holds the audio back until the diarizer has judged it, and reports where the floor
  passes from one speaker to another (the chunker cuts there when it finds quiet);
- it labels finished segments: the speaker is the slot that talks most in it; whoever else
  talks at the same time as someone for OVERLAP_SECONDS or more is its `overlap`; with word
  timing, a segment is split where the speaker of its words changes;
- labels S1, S2, … are given in order of first appearance in the transcript.

Memory stays flat however long the recording: it keeps frames only from the oldest segment
not yet labelled, and one step of the diarizer's audio.
"""

import dataclasses
from typing import Protocol

import numpy as np

from transcribed.output.transcript import Segment, Word, word_ends

FRAME_SAMPLES = 160  # the diarizer's output frame: 10 ms at 16 kHz
FRAMES_PER_SECOND = 100
ACTIVE = 0.5  # a slot whose probability is above this is talking (the model's own threshold)
# A new speaker must hold the floor this long (frames where they are the most likely talker,
# silence not counted) before it counts as a change of turn: shorter runs are backchannels,
# crosstalk or the model hesitating.
MIN_TURN_FRAMES = 50
# A change of turn after a silence is placed at most this far before the new speaker starts:
# inside the silence, where the chunker will find quiet.
GAP_MARGIN_FRAMES = 30
# Audio is handed on this many frames behind what the diarizer has judged, so that a change
# of turn is usually known before the audio around it reaches the chunker.
_HOLD_FRAMES = MIN_TURN_FRAMES + GAP_MARGIN_FRAMES
OVERLAP_SECONDS = 0.5  # less overlapping speech than this in a segment is not marked


class SpeakerStream(Protocol):
    """One recording's speaker activity, streamed: `diarizer.DiarizerStream` in production.

    `feed` and `finish` return the probabilities (frames x `speakers`, float32) of the
    frames that became final, in order from the start of the recording, one frame per
    FRAME_SAMPLES samples."""

    speakers: int  # speaker slots the model has

    def feed(self, audio: np.ndarray) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...


class SpeakerSource(Protocol):
    """The resident diarizer: opens one stream per recording."""

    speakers: int

    def open(self) -> SpeakerStream: ...


class SpeakerTrack:
    """The speakers of one recording, fed the decoded audio in order."""

    def __init__(self, stream: SpeakerStream, max_speakers: int | None = None) -> None:
        self._stream = stream
        self._slots = min(max_speakers or stream.speakers, stream.speakers)
        self._audio: list[np.ndarray] = []  # decoded, not yet handed on
        self._fed = 0  # samples fed
        self._handed = 0  # samples handed on
        self._frames = np.zeros((0, self._slots), np.float32)  # from frame `_first` on
        self._first = 0
        self._talk = np.zeros(self._slots, np.int64)  # frames each slot talks, whole recording
        self._turns = _TurnFinder()
        self._names: dict[int, str] = {}  # slot -> label, in order of first appearance

    # --- audio in, audio out --------------------------------------------------------------

    def feed(self, block: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Add decoded audio. Returns the audio now judged (to be chunked), and the changes
        of turn found so far as sample positions in the recording."""
        self._audio.append(block)
        self._fed += len(block)
        self._add(self._stream.feed(block))
        judged = (self._first + len(self._frames) - _HOLD_FRAMES) * FRAME_SAMPLES
        return self._hand_on(max(self._handed, judged)), self._turns.take()

    def finish(self) -> tuple[np.ndarray, list[int]]:
        """The rest of the audio and its changes of turn, once the recording has ended."""
        self._add(self._stream.finish())
        needed = -(-self._fed // FRAME_SAMPLES)  # a frame for the last partial one too
        missing = needed - (self._first + len(self._frames))
        if missing > 0:  # the model judged fewer frames: the tail counts as silence
            silence = np.zeros((missing, self._slots), np.float32)
            self._frames = np.concatenate([self._frames, silence])
        return self._hand_on(self._fed), self._turns.take()

    def _add(self, probabilities: np.ndarray) -> None:
        frames = _fold(np.asarray(probabilities, np.float32), self._slots)
        room = -(-self._fed // FRAME_SAMPLES) - (self._first + len(self._frames))
        frames = frames[: max(room, 0)]  # never more frames than audio
        active = frames > ACTIVE
        self._talk += active.sum(axis=0)
        self._turns.add(self._first + len(self._frames), _dominant(frames, active))
        self._frames = np.concatenate([self._frames, frames])

    def _hand_on(self, until: int) -> np.ndarray:
        until = min(until, self._fed)
        if until <= self._handed:
            return np.zeros(0, np.float32)
        held = np.concatenate(self._audio) if len(self._audio) != 1 else self._audio[0]
        ready, rest = held[: until - self._handed], held[until - self._handed :]
        self._audio = [rest] if len(rest) else []
        self._handed = until
        return ready

    def forget_before(self, seconds: float) -> None:
        """Frames before `seconds` are no longer needed: every segment there is labelled."""
        drop = min(round(seconds * FRAMES_PER_SECOND) - self._first, len(self._frames))
        if drop > 0:
            self._frames = self._frames[drop:].copy()
            self._first += drop

    # --- labels ---------------------------------------------------------------------------

    def label(self, segment: Segment) -> list[Segment]:
        """`segment` with its speaker and overlap; split where its words' speaker changes
        (with word timing). Silent segments have no speaker."""
        if not segment.text:
            return [segment]
        pieces = self._split_by_words(segment) if segment.words else None
        if pieces is None:
            return [self._labelled(segment, self._main_speaker(segment.start, segment.end))]
        return [self._labelled(piece, slot) for piece, slot in pieces]

    def summary(self) -> dict[str, dict[str, float]]:
        """Each label's talk time in seconds (overlapping speech counts for everyone talking)
        and share of all labelled talk time, in label order."""
        total = sum(int(self._talk[slot]) for slot in self._names)
        return {
            name: {
                "seconds": round(int(self._talk[slot]) / FRAMES_PER_SECOND, 2),
                "share": round(int(self._talk[slot]) / total, 2) if total else 0.0,
            }
            for slot, name in self._names.items()
        }

    def _window(self, start: float, end: float) -> np.ndarray:
        first = max(round(start * FRAMES_PER_SECOND) - self._first, 0)
        last = max(round(end * FRAMES_PER_SECOND) - self._first, first)
        return self._frames[first:last]

    def _main_speaker(self, start: float, end: float) -> int | None:
        """The slot talking most in [start, end); when nobody is heard, the likeliest one."""
        frames = self._window(start, end)
        if not len(frames):
            return None
        talking = (frames > ACTIVE).sum(axis=0)
        if talking.any():
            return int(np.argmax(talking))  # ties go to the earlier arrival
        return int(np.argmax(frames.sum(axis=0)))

    def _labelled(self, segment: Segment, slot: int | None) -> Segment:
        if slot is None:
            return segment
        speaker = self._name(slot)
        overlap = tuple(self._name(other) for other in self._overlapping(segment, slot))
        return dataclasses.replace(segment, speaker=speaker, overlap=overlap)

    def _overlapping(self, segment: Segment, slot: int) -> list[int]:
        """The other slots talking while someone else does, for OVERLAP_SECONDS or more."""
        active = self._window(segment.start, segment.end) > ACTIVE
        crowded = active[active.sum(axis=1) >= 2]
        needed = OVERLAP_SECONDS * FRAMES_PER_SECOND
        return [s for s in range(self._slots) if s != slot and crowded[:, s].sum() >= needed]

    def _name(self, slot: int) -> str:
        return self._names.setdefault(slot, f"S{len(self._names) + 1}")

    def _split_by_words(self, segment: Segment) -> list[tuple[Segment, int]] | None:
        """The segment cut between words where the speaker changes, each piece with its
        speaker's slot; None when the words cannot be placed in the text or nobody is heard."""
        ends = word_ends(segment.text, segment.words)
        slots = _fill_gaps([self._word_speaker(word) for word in segment.words])
        if ends is None or slots is None:
            return None
        runs = _runs(slots)
        pieces = []
        for number, (first, last) in enumerate(runs):
            start = segment.start if number == 0 else _between(segment.words, first)
            end = segment.end if last == len(slots) - 1 else _between(segment.words, last + 1)
            text_start = 0 if number == 0 else ends[first - 1]
            text_end = len(segment.text) if last == len(slots) - 1 else ends[last]
            gap = segment.words[first].start - segment.words[first - 1].end if first else 0.0
            piece = dataclasses.replace(
                segment,
                start=start,
                end=end,
                text=segment.text[text_start:text_end].strip(),
                words=segment.words[first : last + 1],
                pause_before=segment.pause_before if number == 0 else round(gap, 2),
                truncated=segment.truncated and last == len(slots) - 1,  # the end was cut
            )
            pieces.append((piece, slots[first]))
        return pieces

    def _word_speaker(self, word: Word) -> int | None:
        frames = self._window(word.start, max(word.end, word.start + 1 / FRAMES_PER_SECOND))
        talking = (frames > ACTIVE).sum(axis=0)
        return int(np.argmax(talking)) if talking.any() else None


def _fold(frames: np.ndarray, slots: int) -> np.ndarray:
    """Keep the first `slots` speakers (arrival order): speech the model gives a later slot
    goes to whichever kept one it finds likeliest at that moment (a `max_speakers` cap)."""
    if frames.shape[1] <= slots:
        return frames
    kept = frames[:, :slots].copy()
    likeliest = kept.argmax(axis=1)
    rows = np.arange(len(kept))
    kept[rows, likeliest] = np.maximum(kept[rows, likeliest], frames[:, slots:].max(axis=1))
    return kept


def _dominant(frames: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Per frame, the likeliest talking slot, or -1 when nobody talks."""
    if not len(frames):
        return np.zeros(0, np.int64)
    return np.where(active.any(axis=1), frames.argmax(axis=1), -1)


def _fill_gaps(slots: list[int | None]) -> list[int] | None:
    """A word nobody is heard saying belongs to the speaker before it (or after it, at the
    start); None when no word has a speaker."""
    known = [slot for slot in slots if slot is not None]
    if not known:
        return None
    filled, previous = [], known[0]
    for slot in slots:
        previous = slot if slot is not None else previous
        filled.append(previous)
    return filled


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """(first, last) indices of each run of equal values."""
    runs, first = [], 0
    for index in range(1, len(slots) + 1):
        if index == len(slots) or slots[index] != slots[first]:
            runs.append((first, index - 1))
            first = index
    return runs


def _between(words: tuple[Word, ...], index: int) -> float:
    """The moment between word `index - 1` and word `index`."""
    return round((words[index - 1].end + words[index].start) / 2, 3)


class _TurnFinder:
    """Changes of turn in a stream of per-frame dominant speakers: a speaker other than the
    current one holding the floor for MIN_TURN_FRAMES (silence not counted, their run broken
    only by someone else talking) takes the turn."""

    def __init__(self) -> None:
        self._current: int | None = None
        self._current_end = 0  # the frame after the current speaker last talked
        self._candidate: int | None = None
        self._candidate_start = 0
        self._candidate_frames = 0
        self._found: list[int] = []  # sample positions, not yet taken

    def add(self, first: int, dominant: np.ndarray) -> None:
        """Frames `first`, `first + 1`, … had these dominant speakers (-1: nobody)."""
        talking = np.flatnonzero(dominant >= 0)
        if not len(talking):
            return
        speakers = dominant[talking]
        starts = np.flatnonzero(np.diff(speakers, prepend=-2))  # where the speaker changes
        stops = [*starts[1:], len(speakers)]
        for start, stop in zip(starts, stops, strict=True):
            begins, ends = first + int(talking[start]), first + int(talking[stop - 1]) + 1
            self._run(int(speakers[start]), begins, ends, int(stop - start))

    def _run(self, speaker: int, begins: int, ends: int, frames: int) -> None:
        """A run of `frames` frames where `speaker` is dominant, from frame `begins` to
        `ends` (exclusive; silent frames inside it not counted)."""
        if speaker == self._current:
            self._current_end, self._candidate = ends, None
            return
        if speaker != self._candidate:
            self._candidate, self._candidate_start, self._candidate_frames = speaker, begins, 0
        self._candidate_frames += frames
        if self._candidate_frames < MIN_TURN_FRAMES:
            return
        if self._current is not None:
            middle = (self._current_end + self._candidate_start) // 2
            at = max(middle, self._candidate_start - GAP_MARGIN_FRAMES)
            self._found.append(at * FRAME_SAMPLES)
        self._current, self._current_end, self._candidate = speaker, ends, None

    def take(self) -> list[int]:
        found, self._found = self._found, []
        return found
