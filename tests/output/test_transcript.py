"""Joining chunk texts and choosing the main language."""

import math

from transcribed.model import scoring
from transcribed.output.transcript import (
    Segment,
    join_texts,
    language_shares,
    main_language,
    weighted_confidence,
)


def test_space_delimited_languages_get_one_space() -> None:
    assert join_texts(["Hello there. ", " How are you?", ""]) == "Hello there. How are you?"


def test_cjk_is_joined_without_spaces_but_mixed_scripts_keep_one() -> None:
    assert join_texts(["今天开会。", "我们讨论预算"]) == "今天开会。我们讨论预算"
    assert join_texts(["こんにちは", "カタカナ"]) == "こんにちはカタカナ"
    assert join_texts(["预算", "budget review"]) == "预算 budget review"
    assert join_texts(["안녕하세요", "반갑습니다"]) == "안녕하세요 반갑습니다"  # Korean uses spaces


def test_main_language_is_weighted_by_duration() -> None:
    segments = (Segment(0, 10, "a", "en"), Segment(10, 40, "b", "zh"), Segment(40, 45, "", None))
    assert main_language(segments) == "zh"
    assert main_language((Segment(0, 1, "", None),)) is None


def test_mixed_speech_gets_shares_and_a_weighted_confidence() -> None:
    segments = (
        Segment(0, 30, "a", "zh", "Chinese", 0.9),
        Segment(30, 50, "b", "en", "English", 0.8),
        Segment(50, 63, "c", "zh", "Chinese", 0.5),
        Segment(63, 70, "", None),
    )
    assert language_shares(segments) == {"zh": 0.68, "en": 0.32}
    assert weighted_confidence(segments, "zh") == round((30 * 0.9 + 13 * 0.5) / 43, 4)
    assert weighted_confidence(segments, None) is None
    assert language_shares((Segment(0, 1, "", None),)) == {}


def test_confidence_is_the_probability_of_the_language_tokens() -> None:
    marker = 99
    ids = [5, 17, marker, 40, 41]  # "language" " English" <asr_text> text…
    logprobs = [math.log(0.99), math.log(0.8), math.log(0.7), 0.0, 0.0]
    assert scoring.language_confidence(ids, logprobs, marker) == round(0.99 * 0.8, 4)
    assert scoring.language_confidence([marker, 40], logprobs, marker) is None  # forced
    assert scoring.language_confidence([5, 40, 41], logprobs, marker) is None  # no marker
    late = [1] * (scoring.LANGUAGE_STEPS + 1) + [marker]
    assert scoring.language_confidence(late, [0.0] * 40, marker) is None  # beyond kept steps
