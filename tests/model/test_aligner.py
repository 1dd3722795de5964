"""Word timing with the forced aligner (tiny real checkpoint), and subtitles cut at words."""

import importlib.util
import itertools
import json

import numpy as np
import pytest
import srt

from support.recordings import write_soundfile
from support.running import transcribe_once
from transcribed.model.aligner import Aligner, monotonic_words
from transcribed.output.subtitles import cues
from transcribed.output.transcript import Segment, Word


@pytest.fixture(scope="module")
def aligner(tiny_aligner) -> Aligner:
    return Aligner.load(str(tiny_aligner), "cpu", allow_download=False)


def _noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_words_come_back_in_order_inside_the_piece(aligner: Aligner) -> None:
    words = aligner.align(_noise(3), "guten Morgen, the lazy dog.", "en")
    assert [w.text for w in words] == ["guten", "Morgen", "the", "lazy", "dog"]
    assert all(0 <= w.start <= w.end <= 3 for w in words)
    assert all(a.end <= b.start for a, b in itertools.pairwise(words))


def test_what_the_aligner_cannot_do_keeps_segment_timing(aligner: Aligner) -> None:
    assert aligner.align(_noise(3), "مرحبا بالعالم", "ar") == ()  # not one of its 11 languages
    assert aligner.align(_noise(181), "too long a window", "en") == ()
    assert aligner.align(_noise(3), "  ", "en") == ()
    assert aligner.supports("zh") and aligner.supports(None) and not aligner.supports("ar")


def test_out_of_range_and_backwards_times_are_clamped() -> None:
    raw = [
        {"text": "a", "start_time": 1.0, "end_time": 0.5},
        {"text": "b", "start_time": 0.2, "end_time": 9.0},
        {"text": "c", "start_time": 112.0, "end_time": 112.0},
    ]
    assert monotonic_words(raw, 3.0) == (
        Word("a", 1.0, 1.0),
        Word("b", 1.0, 3.0),
        Word("c", 3.0, 3.0),
    )


def test_subtitles_are_cut_after_whole_words_and_timed_by_them() -> None:
    text = (
        "Hello there, this is a rather long sentence that will not fit in one subtitle cue"
        " at all. Bye!"
    )
    words = tuple(
        Word(token.strip(",.!"), round(i * 0.5, 3), round(i * 0.5 + 0.4, 3))
        for i, token in enumerate(text.split())
    )
    made = cues((Segment(0.0, 10.0, text, "en", words=words),), max_chars=40)
    assert " ".join(cue.text for cue in made) == text, "punctuation stays with its word"
    starts = {word.start for word in words}
    ends = {word.end for word in words}
    assert all(cue.start in starts and cue.end in ends for cue in made)
    assert all(len(cue.text) <= 40 for cue in made) and len(made) >= 3


def test_the_aligner_setting_adds_words_to_json_and_subtitles(
    tiny_model, tiny_aligner, tmp_path
) -> None:
    audio = write_soundfile(tmp_path / "talk.wav", 45, 16000, "PCM_16")
    transcribe_once(audio, tiny_model, aligner=str(tiny_aligner), formats='["json", "srt"]')
    segments = json.loads((tmp_path / "talk.json").read_text())["segments"]
    spoken = [s for s in segments if s["text"]]
    assert spoken and all(s["words"] for s in spoken)
    for segment in spoken:
        assert all(
            segment["start"] <= w["start"] <= w["end"] <= segment["end"] for w in segment["words"]
        )
    word_starts = {w["start"] for s in spoken for w in s["words"]}
    parsed = list(srt.parse((tmp_path / "talk.srt").read_text()))
    assert parsed and all(round(c.start.total_seconds(), 3) in word_starts for c in parsed)


def test_a_language_whose_word_splitter_is_missing_keeps_segment_timing(aligner: Aligner) -> None:
    if importlib.util.find_spec("nagisa"):
        pytest.skip("nagisa is installed here: Japanese is aligned")
    assert aligner.align(_noise(3), "こんにちは 世界", "ja") == ()  # no ImportError, no failed job
    assert not aligner.supports("ja"), "asked once, then skipped"
