"""Speaker labels from known speaker changes: a scripted diarizer behind `SpeakerStream`.

The tiny random diarizer's labels are random, so the labelling logic (turns, chunk cuts at
changes, splits between words, overlap, numbering) is driven here by a narrow fake that
reports exactly the speakers a test scripts, as late as the real one does.
"""

import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from transcribed.audio.memory import pin_mmap_threshold
from transcribed.model.pipeline import StreamProgress, transcribe_stream
from transcribed.model.speakers import FRAME_SAMPLES, SpeakerStream, SpeakerTrack
from transcribed.output.transcript import (
    ChunkText,
    ModelInfo,
    Segment,
    SourceInfo,
    Transcript,
    Word,
)

RATE = 16000


class ScriptedSpeakers:
    """Speaker activity from a script of (start, end, slot) turns, which may overlap, each
    with probability 0.9 (or a fourth value). Like the real diarizer, it reports frames `lag`
    seconds behind the audio fed to it."""

    speakers = 4

    def __init__(self, turns: list[tuple[float, ...]], lag: float = 30.4) -> None:
        self._turns = turns
        self._lag = round(lag * RATE)
        self._fed = 0
        self._given = 0  # frames reported

    def feed(self, audio: np.ndarray) -> np.ndarray:
        self._fed += len(audio)
        return self._frames_until(max(0, self._fed - self._lag) // FRAME_SAMPLES)

    def finish(self) -> np.ndarray:
        return self._frames_until(self._fed // FRAME_SAMPLES)

    def _frames_until(self, end: int) -> np.ndarray:
        frames = np.full((max(0, end - self._given), self.speakers), 0.05, np.float32)
        times = (np.arange(self._given, end) + 0.5) / 100
        for start, stop, slot, *probability in self._turns:
            frames[(times >= start) & (times < stop), int(slot)] = (probability or [0.9])[0]
        self._given = max(self._given, end)
        return frames


class Words:
    """A recognizer writing one word per half second of audio: w0 w1 …"""

    info = ModelInfo("scripted", "cpu", "float32")
    batch_size = 3

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        return [ChunkText(_words(len(chunk) / RATE), "en", False) for chunk in chunks]


def _words(seconds: float) -> str:
    return " ".join(f"w{index}" for index in range(max(1, int(seconds / 0.5))))


class EvenAligner:
    """Word timing spread evenly over the piece of audio."""

    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]:
        words = text.split()
        step = len(audio) / RATE / len(words)
        timed = [(word, i * step, (i + 0.8) * step) for i, word in enumerate(words)]
        return tuple(Word(word, round(start, 3), round(end, 3)) for word, start, end in timed)


def _talk(seconds: float, quiet_at: tuple[float, ...] = (), seed: int = 0) -> np.ndarray:
    """Continuous noise standing in for speech, with 150 ms of silence at `quiet_at`."""
    audio = 0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    for moment in quiet_at:
        audio[round((moment - 0.05) * RATE) : round((moment + 0.1) * RATE)] = 0
    return audio.astype(np.float32)


def _blocks(audio: np.ndarray, size: int = 3 * RATE + 17) -> list[np.ndarray]:
    return [audio[start : start + size] for start in range(0, len(audio), size)]


def _transcribe(audio: np.ndarray, speakers: ScriptedSpeakers, **options) -> Transcript:
    return transcribe_stream(
        _blocks(audio),
        SourceInfo("call.wav", "0" * 64, 1),
        Words(),
        chunk_seconds=30,
        language=None,
        speakers=speakers,
        **options,
    )


def _spoken(transcript: Transcript) -> list[Segment]:
    return [segment for segment in transcript.segments if segment.text]


def _speaker_at(transcript: Transcript, moment: float) -> str | None:
    return next(s.speaker for s in transcript.segments if s.start <= moment < s.end)


def test_chunks_end_at_speaker_changes_where_there_is_quiet() -> None:
    """Without word timing: each change of speaker falls on a segment boundary."""
    changes = (12.0, 19.5, 40.0)
    script = [(0, 12.0, 2), (12.0, 19.5, 0), (19.5, 40.0, 2), (40.0, 55.0, 3)]
    transcript = _transcribe(_talk(55, quiet_at=changes), ScriptedSpeakers(script))
    bounds = [segment.start for segment in transcript.segments]
    for change in changes:
        assert min(abs(bound - change) for bound in bounds) <= 0.3, (change, bounds)
    labels = [(s.start, s.end, s.speaker) for s in transcript.segments]
    assert all(s.speaker for s in _spoken(transcript)), labels
    # Numbered by first appearance, whatever slot the model gave each speaker.
    expected = {5.0: "S1", 15.0: "S2", 30.0: "S1", 50.0: "S3"}
    assert {moment: _speaker_at(transcript, moment) for moment in expected} == expected
    assert list(transcript.speakers) == ["S1", "S2", "S3"]
    assert transcript.speakers["S1"]["seconds"] == pytest.approx(32.5, abs=0.05)
    assert transcript.speakers["S2"]["seconds"] == pytest.approx(7.5, abs=0.05)
    assert sum(entry["share"] for entry in transcript.speakers.values()) == pytest.approx(1, 0.02)


def test_a_change_inside_continuous_speech_is_not_cut_blind() -> None:
    """No quiet near the change: the chunk is not cut there (it would split a word)."""
    script = [(0, 12.0, 0), (12.0, 30.0, 1)]
    transcript = _transcribe(_talk(30), ScriptedSpeakers(script))
    assert len(transcript.segments) == 1
    # The one who talks most of it; the other is never the main speaker, so gets no label.
    assert transcript.segments[0].speaker == "S1"
    assert transcript.speakers == {"S1": {"seconds": 18.0, "share": 1.0}}


def test_with_word_timing_a_segment_is_split_where_the_speaker_changes() -> None:
    script = [(0, 12.2, 0), (12.2, 21.0, 1), (21.0, 30.0, 0)]
    transcript = _transcribe(_talk(30), ScriptedSpeakers(script), aligner=EvenAligner())
    pieces = transcript.segments
    assert [p.speaker for p in pieces] == ["S1", "S2", "S1"]
    assert pieces[0].start == 0 and pieces[-1].end == 30
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces)), "they tile the chunk"
    assert [round(p.end) for p in pieces[:-1]] == [12, 21]
    assert " ".join(p.text for p in pieces) == _words(30), "no word lost or repeated"
    for piece in pieces:
        assert [w.text for w in piece.words] == piece.text.split()
        assert all(piece.start <= w.start <= w.end <= piece.end for w in piece.words)
    assert pieces[1].pause_before == pytest.approx(0.1, abs=0.01)  # the gap between words


def test_overlapping_speech_is_marked_and_a_brief_one_is_not() -> None:
    script = [(0, 30.0, 0), (8.0, 11.0, 1), (20.0, 20.2, 2)]
    transcript = _transcribe(_talk(30), ScriptedSpeakers(script))
    [segment] = transcript.segments
    assert segment.speaker == "S1" and segment.overlap == ("S2",)
    assert list(transcript.speakers) == ["S1", "S2"]  # 0.2 s of S3: no label of its own


def test_max_speakers_folds_later_arrivals_into_the_likeliest_kept_one() -> None:
    changes = (10.0, 20.0)
    # A third voice, which the model finds more like the second speaker than the first.
    script = [(0, 10.0, 0), (10.0, 20.0, 1), (20.0, 30.0, 2), (20.0, 30.0, 1, 0.3)]
    capped = _transcribe(_talk(30, changes), ScriptedSpeakers(script), max_speakers=2)
    assert [s.speaker for s in capped.segments] == ["S1", "S2"]  # no change of turn at 20 s
    assert capped.speakers["S2"]["seconds"] == pytest.approx(20, abs=0.05)
    free = _transcribe(_talk(30, changes), ScriptedSpeakers(script))
    assert list(free.speakers) == ["S1", "S2", "S3"]


def test_labels_stay_stable_through_a_long_recording() -> None:
    """Six minutes, three speakers taking turns of 7 to 23 s: every segment has its slot's
    label, and a slot's label never changes (frames are dropped as batches finish)."""
    rng = np.random.default_rng(3)
    script, moment, order = [], 0.0, itertools.cycle([2, 0, 2, 3, 0])
    while moment < 360:
        length = float(rng.uniform(7, 23))
        script.append((moment, min(moment + length, 360.0), next(order)))
        moment += length
    changes = tuple(start for start, _, _ in script[1:])
    transcript = _transcribe(_talk(360, changes), ScriptedSpeakers(script))
    label_of = {2: "S1", 0: "S2", 3: "S3"}
    for segment in transcript.segments:
        middle = (segment.start + segment.end) / 2
        slot = next(slot for start, end, slot in script if start <= middle < end)
        assert segment.speaker == label_of[slot], (segment.start, segment.end)
    assert len(transcript.segments) == len(script), "each turn its own segment"


def test_a_blip_or_a_silence_is_not_a_change_of_turn() -> None:
    script = [(0, 10.0, 0), (10.0, 10.3, 1), (10.3, 14.0, 0), (16.0, 30.0, 0)]
    track = SpeakerTrack(ScriptedSpeakers(script, lag=0))
    audio = _talk(30)
    _, turns = track.feed(audio)
    assert turns + track.finish()[1] == []


def test_the_track_hands_on_all_audio_in_order_and_holds_little() -> None:
    script = [(0, 20.0, 0), (20.0, 100.0, 1)]
    track = SpeakerTrack(ScriptedSpeakers(script))
    audio, handed, turns = _talk(100), [], []
    for block in _blocks(audio):
        out, found = track.feed(block)
        handed.append(out)
        turns += found
        held = sum(len(b) for b in _blocks(audio)[: len(handed)]) - sum(map(len, handed))
        assert held <= 32 * RATE  # the diarizer's look-ahead and a little, never more
    out, found = track.finish()
    assert np.array_equal(np.concatenate([*handed, out]), audio)
    assert [round(turn / RATE, 1) for turn in turns + found] == [20.0]


class RotatingSpeakers:
    """Three of eight slots taking 20 s turns for as long as the audio lasts, reported in
    27.2 s steps 30.4 s behind the audio, as the real diarizer's schedule does."""

    speakers = 8

    def __init__(self) -> None:
        self._fed = 0
        self._given = 0

    def feed(self, audio: np.ndarray) -> np.ndarray:
        self._fed += len(audio)
        ready = max(0, self._fed - round(30.4 * RATE)) // FRAME_SAMPLES
        return self._until(ready // 2720 * 2720)

    def finish(self) -> np.ndarray:
        return self._until(self._fed // FRAME_SAMPLES)

    def _until(self, end: int) -> np.ndarray:
        frames = np.full((max(0, end - self._given), self.speakers), 0.05, np.float32)
        slots = (np.arange(self._given, end) // 2000) % 3 * 2  # slots 0, 2, 4
        frames[np.arange(len(frames)), slots] = 0.9
        self._given = max(self._given, end)
        return frames


def _peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


HOURS = 3


def test_memory_stays_flat_through_a_three_hour_recording() -> None:
    """Three hours of turns through the chunker, the track and the labels: peak memory after
    20 minutes and after three hours are the same. The audio is one minute, repeated, so the
    test holds no recording either. (The diarizer's own state is fixed in size: see
    test_diarizer; TRANSCRIBED_LOAD_DIARIZER=1 runs this on the tiny real one.)"""
    pin_mmap_threshold()  # as the daemon does
    minute = _talk(60, quiet_at=(20.0, 40.0, 60.0))
    speakers = _real_diarizer() if os.environ.get("TRANSCRIBED_LOAD_DIARIZER") else None
    early: list[float] = []

    def blocks() -> Iterator[np.ndarray]:
        for _ in range(HOURS * 60):
            yield from _blocks(minute, 4 * RATE)

    def progress(now: StreamProgress) -> None:
        if now.done >= 20 * 60 and not early:
            early.append(_peak_mib())

    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here
    transcript = transcribe_stream(
        blocks(),
        SourceInfo("long.wav", "0" * 64, 1),
        Words(),
        chunk_seconds=30,
        language=None,
        speakers=speakers or RotatingSpeakers(),
        on_progress=progress,
    )
    grown = _peak_mib() - early[0]
    print(f"peak memory grew {grown:.1f} MiB from 20 min to {HOURS} h")
    assert transcript.segments[-1].end == HOURS * 3600
    assert all(segment.speaker for segment in transcript.segments)
    if speakers is None:
        assert len(transcript.segments) >= HOURS * 3600 / 20, "a segment per turn at least"
        assert list(transcript.speakers) == ["S1", "S2", "S3"]
    # Keeping the recording's speaker frames would take 35 MiB; its audio, 660 MiB.
    assert grown < 15


def _real_diarizer() -> SpeakerStream:
    from transcribed.model.diarizer import Diarizer
    from transcribed.model.synthetic import build_tiny_diarizer

    folder = build_tiny_diarizer(Path(tempfile.mkdtemp(prefix="tiny-diarizer-")))
    return Diarizer.load(str(folder), "cpu", allow_download=False).open()
