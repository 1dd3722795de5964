"""The pipeline's guards against the model's failure modes, with a scripted recognizer.

The recognizer is a narrow fake behind the `Recognizer` protocol: it answers each chunk with
text chosen by the test, so truncation and silence can be staged exactly.
"""

from collections.abc import Callable

import numpy as np

from transcribed.audio.pauses import quiet_edges
from transcribed.model.pipeline import transcribe_stream
from transcribed.output.outbox import render_txt
from transcribed.output.transcript import ChunkText, ModelInfo, SourceInfo

RATE = 16000


class Scripted:
    info = ModelInfo("scripted", "cpu", "float32")
    batch_size = 4

    def __init__(self, answer: Callable[[np.ndarray], ChunkText]) -> None:
        self.answer = answer
        self.calls: list[int] = []  # lengths of the chunks the model was asked about

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        self.calls += [len(chunk) for chunk in chunks]
        return [self.answer(chunk) for chunk in chunks]


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(
        np.float32
    )


def _run(audio: np.ndarray, model: Scripted):
    return transcribe_stream(
        [audio], SourceInfo("a.wav", "0" * 64, 1), model, chunk_seconds=30, language=None
    )


def test_silence_is_not_sent_to_the_model_and_gives_no_speech() -> None:
    model = Scripted(lambda chunk: ChunkText("invented words", "en", False))
    transcript = _run(np.zeros(45 * RATE, np.float32), model)
    assert model.calls == [] and transcript.status == "no_speech" and transcript.text == ""
    assert all(segment.no_speech for segment in transcript.segments)
    assert transcript.segments[-1].end == 45


def test_only_the_silent_chunks_are_skipped() -> None:
    audio = np.concatenate([_speech(20), np.zeros(30 * RATE, np.float32), _speech(20, 1)])
    model = Scripted(lambda chunk: ChunkText("words", "en", False))
    transcript = _run(audio, model)
    assert transcript.status == "ok" and len(model.calls) < len(transcript.segments)
    assert [s.no_speech for s in transcript.segments].count(True) >= 1


def test_a_truncated_chunk_is_retried_in_two_smaller_pieces() -> None:
    def answer(chunk: np.ndarray) -> ChunkText:
        long = len(chunk) > 20 * RATE  # the whole chunk "hits the budget"; halves do not
        return ChunkText("half" if not long else "cut off", "en", truncated=long)

    model = Scripted(answer)
    transcript = _run(_speech(30), model)
    assert model.calls[0] == 30 * RATE and len(model.calls) == 3
    assert [s.text for s in transcript.segments] == ["half", "half"]
    assert not any(s.truncated for s in transcript.segments)
    assert transcript.segments[0].start == 0 and transcript.segments[-1].end == 30
    assert transcript.segments[0].end == transcript.segments[1].start


def test_a_chunk_still_truncated_after_the_retry_stays_flagged() -> None:
    model = Scripted(lambda chunk: ChunkText("loop", "en", truncated=True))
    transcript = _run(_speech(30), model)
    assert len(transcript.segments) == 2 and all(s.truncated for s in transcript.segments)


def test_the_txt_starts_a_paragraph_after_a_long_pause() -> None:
    audio = np.concatenate([_speech(10), np.zeros(3 * RATE, np.float32), _speech(10, 1)])
    model = Scripted(lambda chunk: ChunkText("words", "en", False))
    transcript = _run(audio, model)
    assert [s.text for s in transcript.segments] == ["words", "words"]
    assert transcript.segments[1].pause_before >= 2.0
    assert render_txt(transcript) == b"words\n\nwords\n"
    assert transcript.text == "words words"


def test_quiet_edges_measure_the_silence_at_each_end() -> None:
    audio = np.concatenate(
        [np.zeros(RATE, np.float32), _speech(2), np.zeros(RATE // 2, np.float32)]
    )
    leading, trailing = quiet_edges(audio)
    assert abs(leading - 1.0) <= 0.05 and abs(trailing - 0.5) <= 0.05
    assert quiet_edges(np.zeros(RATE, np.float32)) == (1.0, 1.0)
