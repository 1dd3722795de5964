"""From decoded audio to a Transcript: chunk at quiet points, transcribe, assemble segments."""

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from transcribed.audio import SAMPLE_RATE
from transcribed.chunking import StreamChunker
from transcribed.transcript import (
    ChunkText,
    ModelInfo,
    Segment,
    SourceInfo,
    Transcript,
    join_texts,
    language_confidence,
    language_shares,
    main_language,
)


class Recognizer(Protocol):
    """What the pipeline needs of the model: `engine.Engine` in production."""

    info: ModelInfo
    batch_size: int  # chunks per model call: how many the pipeline gathers before calling

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = ...,
    ) -> list[ChunkText]: ...


def transcribe_stream(
    blocks: Iterable[np.ndarray],
    source: SourceInfo,
    recognizer: Recognizer,
    *,
    chunk_seconds: float,
    language: str | None,
    should_stop: Callable[[], bool] = lambda: False,
    started: float | None = None,
) -> Transcript:
    """A complete transcript of audio arriving as 16 kHz mono float32 blocks.

    Chunks go to the model a batch at a time while decoding continues, so memory holds one
    batch of chunks, not the recording: a 12-hour file needs no more than a 1-minute one.
    """
    started = time.monotonic() if started is None else started
    chunker = StreamChunker(SAMPLE_RATE, chunk_seconds)
    pending: list[tuple[int, np.ndarray]] = []
    segments: list[Segment] = []
    for block in blocks:
        pending += chunker.feed(block)
        while len(pending) >= recognizer.batch_size:
            segments += _recognize(
                pending[: recognizer.batch_size], recognizer, language, should_stop
            )
            del pending[: recognizer.batch_size]
    pending += chunker.finish()
    segments += _recognize(pending, recognizer, language, should_stop)
    duration = segments[-1].end if segments else 0.0
    language = main_language(tuple(segments))
    return Transcript(
        text=join_texts([segment.text for segment in segments]),
        language=language,
        language_confidence=language_confidence(tuple(segments), language),
        languages=language_shares(tuple(segments)),
        segments=tuple(segments),
        duration=duration,
        source=source,
        model=recognizer.info,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        processing_seconds=round(time.monotonic() - started, 3),
        extra={"language_forced": language is not None},
    )


def _recognize(
    pieces: list[tuple[int, np.ndarray]],
    recognizer: Recognizer,
    language: str | None,
    should_stop: Callable[[], bool],
) -> list[Segment]:
    if not pieces:
        return []
    texts = recognizer.transcribe(
        [chunk for _, chunk in pieces], language=language, should_stop=should_stop
    )
    return [
        Segment(
            start=round(start / SAMPLE_RATE, 3),
            end=round((start + len(chunk)) / SAMPLE_RATE, 3),
            text=text.text,
            language=text.language,
            language_name=text.language_name,
            language_confidence=text.language_confidence,
            truncated=text.truncated,
        )
        for (start, chunk), text in zip(pieces, texts, strict=True)
    ]
