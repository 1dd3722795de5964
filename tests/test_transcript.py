"""Joining chunk texts and choosing the main language."""

from transcribed.transcript import Segment, join_texts, main_language


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
