"""From decoded audio to a Transcript: chunk at quiet points, transcribe, assemble segments."""

import dataclasses
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from transcribed.audio.chunking import SILENCE_RMS, StreamChunker, plan_chunks
from transcribed.audio.formats import SAMPLE_RATE
from transcribed.audio.pauses import PauseTracker
from transcribed.model.speakers import SpeakerStream, SpeakerTrack
from transcribed.output.transcript import (
    ChunkText,
    ModelInfo,
    Segment,
    SourceInfo,
    Transcript,
    Word,
    join_texts,
    language_shares,
    main_language,
    weighted_confidence,
)

_MIN_RETRY_SAMPLES = 5 * SAMPLE_RATE  # halves shorter than this are not worth a retry


class WordAligner(Protocol):
    """Word timing for a piece of audio and its text: `aligner.Aligner` in production."""

    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]: ...


class Recognizer(Protocol):
    """What the pipeline needs of the model: `engine.Engine` in production."""

    info: ModelInfo

    @property
    def batch_size(self) -> int:
        """Chunks per model call: how many the pipeline gathers before calling (asked again
        before each call: the vLLM engine's grows as fewer recordings share its servers)."""

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
    context: str | None = None,
    aligner: WordAligner | None = None,
    speakers: SpeakerStream | None = None,
    max_speakers: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[float], None] = lambda seconds: None,
    started: float | None = None,
) -> Transcript:
    """A complete transcript of audio arriving as 16 kHz mono float32 blocks.

    Chunks go to the model a batch at a time while decoding continues, so memory holds one
    batch of chunks (two with an engine of many servers), not the recording: a 12-hour file
    needs no more than a 1-minute one. With `speakers` (a diarizer stream) the audio reaches
    the chunker once the diarizer has judged it, chunks end at changes of speaker, and
    segments are labelled. `on_progress` hears the seconds of audio transcribed after each
    batch.
    """
    started = time.monotonic() if started is None else started
    chunker = StreamChunker(SAMPLE_RATE, chunk_seconds)
    track = SpeakerTrack(speakers, max_speakers) if speakers is not None else None
    pending: list[tuple[int, np.ndarray]] = []
    segments: list[Segment] = []
    pauses = PauseTracker()
    flight = _Flight(recognizer, language, context, should_stop)
    try:
        for block in blocks:
            pending += (
                chunker.feed(*track.feed(block)) if track is not None else chunker.feed(block)
            )
            # The size is read once per batch: the vLLM engine's changes while other
            # recordings start and end, and `send` may wait for the last batch meanwhile.
            while len(pending) >= (size := recognizer.batch_size):
                batch, pending = pending[:size], pending[size:]
                for found, sent in flight.send(batch):
                    segments += _finish(found, sent, aligner, pauses, track)
                    on_progress(segments[-1].end)
        if track is not None:
            pending += chunker.feed(*track.finish())
        pending += chunker.finish()
        for found, batch in [*flight.send(pending), *flight.drain()]:
            segments += _finish(found, batch, aligner, pauses, track)
    finally:
        flight.close()
    duration = segments[-1].end if segments else 0.0
    spoken = any(segment.text for segment in segments)
    language = main_language(tuple(segments))
    return Transcript(
        text=join_texts([segment.text for segment in segments]),
        language=language,
        language_confidence=weighted_confidence(tuple(segments), language),
        languages=language_shares(tuple(segments)),
        segments=tuple(segments),
        duration=duration,
        status="ok" if spoken else "no_speech",
        source=source,
        model=recognizer.info,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        processing_seconds=round(time.monotonic() - started, 3),
        extra={"language_forced": language is not None},
        speakers=track.summary() if track is not None else {},
    )


Recognized = tuple[list[Segment], list[tuple[int, np.ndarray]]]


class _Flight:
    """Hands batches to the recognizer. With one that takes calls from many threads at once
    (`concurrent`: the vLLM servers), a batch is transcribed on a helper thread while the
    next is decoded, so the job's decoder is not idle while the servers work; else each
    batch is transcribed where it is sent. Results come back in order."""

    def __init__(
        self,
        recognizer: Recognizer,
        language: str | None,
        context: str | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self._recognizer, self._language, self._context = recognizer, language, context
        self._should_stop = should_stop
        self._helper = (
            ThreadPoolExecutor(1, "transcribe")
            if getattr(recognizer, "concurrent", False)
            else None
        )
        self._in_flight: tuple[Future[list[Segment]], list[tuple[int, np.ndarray]]] | None = None

    def send(self, batch: list[tuple[int, np.ndarray]]) -> list[Recognized]:
        """Batches done by now, oldest first (this one too when there is no helper)."""
        if self._helper is None:
            return [(self._recognize(batch), batch)]
        done = self.drain()
        self._in_flight = (self._helper.submit(self._recognize, list(batch)), list(batch))
        return done

    def drain(self) -> list[Recognized]:
        if self._in_flight is None:
            return []
        future, batch = self._in_flight
        self._in_flight = None
        return [(future.result(), batch)]

    def _recognize(self, batch: list[tuple[int, np.ndarray]]) -> list[Segment]:
        return _recognize(batch, self._recognizer, self._language, self._context, self._should_stop)

    def close(self) -> None:
        if self._helper is not None:  # after an error: a batch still out is left to end
            self._helper.shutdown(wait=False, cancel_futures=True)


def _finish(
    segments: list[Segment],
    pieces: list[tuple[int, np.ndarray]],
    aligner: WordAligner | None,
    pauses: PauseTracker,
    track: SpeakerTrack | None = None,
) -> list[Segment]:
    """Add what needs each segment's own samples: word timing (with an aligner) and the
    pause before it; then speakers (which may split a segment between words). `segments`
    tile `pieces` (a retried chunk gives two segments)."""
    if not pieces:
        return segments
    finished = []
    containing = iter(pieces)
    start, chunk = next(containing)
    for segment in segments:
        first = round(segment.start * SAMPLE_RATE)
        while first >= start + len(chunk):  # a segment lies within one piece
            start, chunk = next(containing)
        samples = chunk[first - start : round(segment.end * SAMPLE_RATE) - start]
        if aligner is not None and segment.text:
            words = aligner.align(samples, segment.text, segment.language)
            shifted = tuple(
                Word(w.text, round(segment.start + w.start, 3), round(segment.start + w.end, 3))
                for w in words
            )
            segment = dataclasses.replace(segment, words=shifted)
        segment = pauses.measure(segment, samples)
        finished += track.label(segment) if track is not None else [segment]
    if track is not None:
        track.forget_before(finished[-1].end)
    return finished


def _recognize(
    pieces: list[tuple[int, np.ndarray]],
    recognizer: Recognizer,
    language: str | None,
    context: str | None,
    should_stop: Callable[[], bool],
) -> list[Segment]:
    """Segments for consecutive pieces: silent ones skip the model; a piece whose text hit the
    token budget is transcribed again in two halves (cut at a quiet point), once."""
    silent = [_is_silent(chunk) for _, chunk in pieces]
    spoken = [piece for piece, quiet in zip(pieces, silent, strict=True) if not quiet]
    texts = iter(
        recognizer.transcribe(
            [c for _, c in spoken], language=language, context=context, should_stop=should_stop
        )
        if spoken
        else []
    )
    segments: list[Segment] = []
    for (start, chunk), quiet in zip(pieces, silent, strict=True):
        if quiet:
            segments.append(_segment(start, chunk, ChunkText("", None, False, no_speech=True)))
            continue
        text = next(texts)
        if text.truncated and len(chunk) >= 2 * _MIN_RETRY_SAMPLES:
            segments += _retry_in_halves(start, chunk, recognizer, language, context, should_stop)
        else:
            segments.append(_segment(start, chunk, text))
    return segments


def _retry_in_halves(
    start: int,
    chunk: np.ndarray,
    recognizer: Recognizer,
    language: str | None,
    context: str | None,
    should_stop: Callable[[], bool],
) -> list[Segment]:
    """A truncated chunk (usually a loop, or very dense speech) gets a second chance in two
    pieces, each with its own budget; a piece still truncated stays flagged."""
    halves = plan_chunks(chunk, SAMPLE_RATE, len(chunk) / 2 / SAMPLE_RATE + 1)
    parts = [chunk[a:b] for a, b in halves]
    texts = recognizer.transcribe(
        parts, language=language, context=context, should_stop=should_stop
    )
    return [
        _segment(start + a, part, text)
        for (a, _b), part, text in zip(halves, parts, texts, strict=True)
    ]


def _is_silent(chunk: np.ndarray) -> bool:
    """Digital silence or a muted microphone. The model is not asked: it tends to invent text
    for silence."""
    energy = float(np.dot(chunk, chunk)) / max(len(chunk), 1)  # float32 BLAS: no temporary
    return energy < SILENCE_RMS**2


def _segment(start: int, chunk: np.ndarray, text: ChunkText) -> Segment:
    return Segment(
        start=round(start / SAMPLE_RATE, 3),
        end=round((start + len(chunk)) / SAMPLE_RATE, 3),
        text=text.text,
        language=text.language,
        language_name=text.language_name,
        language_confidence=text.language_confidence,
        truncated=text.truncated,
        repetition_fixed=text.repetition_fixed,
        no_speech=text.no_speech,
    )
