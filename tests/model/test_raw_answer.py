"""The one parser both engines use for the model's raw answer."""

import pytest
from transformers.models.qwen3_asr.processing_qwen3_asr import Qwen3ASRProcessor

from transcribed.model.raw_answer import LanguageNames, detected_language, parse_answer

NAMES = LanguageNames()


@pytest.mark.parametrize(
    "raw",
    [
        "language English<asr_text>hello world",
        "language Chinese<asr_text>你好",
        "  language German <asr_text> guten Morgen ",
        "language None<asr_text>",
        "English<asr_text>a line without the word language",
        "no marker at all",
        "",
        "\nlanguage French\n<asr_text>bonjour",
    ],
)
def test_the_detected_language_is_read_as_transformers_reads_it(raw: str) -> None:
    expected = Qwen3ASRProcessor.parse_output(None, raw)["language"]  # the processor's parser
    assert detected_language(raw) == expected


def test_a_detected_language_gets_its_code_name_and_confidence() -> None:
    chunk = parse_answer(
        "language Chinese<asr_text>你好",
        ended=True,
        confidence=0.8,
        forced=None,
        context=None,
        names=NAMES,
    )
    assert (chunk.text, chunk.language, chunk.language_name) == ("你好", "zh", "Chinese")
    assert chunk.language_confidence == 0.8 and not chunk.truncated


def test_a_forced_language_has_no_confidence_and_the_answer_is_all_text() -> None:
    chunk = parse_answer(
        "hello", ended=False, confidence=0.9, forced="en", context=None, names=NAMES
    )
    assert (chunk.text, chunk.language, chunk.language_confidence) == ("hello", "en", None)
    assert chunk.truncated  # the budget was hit
    assert NAMES.prefill("en") == "language English<asr_text>"


def test_no_speech_loops_and_echoed_context_are_handled() -> None:
    silent = parse_answer(
        "language None<asr_text>invented",
        ended=True,
        confidence=None,
        forced=None,
        context=None,
        names=NAMES,
    )
    assert silent.no_speech and silent.text == "" and silent.language is None
    looped = parse_answer(
        "language English<asr_text>" + "ha " * 40 + "Project Kubernetes budget",
        ended=True,
        confidence=0.5,
        forced=None,
        context="Project Kubernetes budget",
        names=NAMES,
    )
    assert looped.repetition_fixed and "Kubernetes" not in looped.text
