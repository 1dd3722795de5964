"""From decoded audio to a Transcript: chunk at quiet points, transcribe, assemble segments."""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from transcribed.audio import SAMPLE_RATE
from transcribed.chunking import plan_chunks
from transcribed.transcript import (
    ChunkText,
    ModelInfo,
    Segment,
    SourceInfo,
    Transcript,
    join_texts,
    main_language,
)


class Recognizer(Protocol):
    """What the pipeline needs of the model: `engine.Engine` in production."""

    info: ModelInfo

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = ...,
    ) -> list[ChunkText]: ...


def transcribe_audio(
    audio: np.ndarray,
    source: SourceInfo,
    recognizer: Recognizer,
    *,
    chunk_seconds: float,
    language: str | None,
    should_stop: Callable[[], bool] = lambda: False,
    started: float | None = None,
) -> Transcript:
    """A complete transcript of `audio` (16 kHz mono float32)."""
    started = time.monotonic() if started is None else started
    ranges = plan_chunks(audio, SAMPLE_RATE, chunk_seconds)
    texts = recognizer.transcribe(
        [audio[start:end] for start, end in ranges], language=language, should_stop=should_stop
    )
    segments = tuple(
        Segment(
            start=round(start / SAMPLE_RATE, 3),
            end=round(end / SAMPLE_RATE, 3),
            text=chunk.text,
            language=chunk.language,
            truncated=chunk.truncated,
        )
        for (start, end), chunk in zip(ranges, texts, strict=True)
    )
    return Transcript(
        text=join_texts([segment.text for segment in segments]),
        language=main_language(segments),
        segments=segments,
        duration=round(len(audio) / SAMPLE_RATE, 3),
        source=source,
        model=recognizer.info,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        processing_seconds=round(time.monotonic() - started, 3),
        extra={"language_forced": language is not None},
    )
