"""From decoded audio to a Transcript: chunk at quiet points, transcribe, assemble segments."""

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from datetime import UTC, datetime
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from transcribed.audio.chunking import SILENCE_RMS, StreamChunker, plan_chunks
from transcribed.audio.formats import SAMPLE_RATE
from transcribed.audio.pauses import PauseTracker
from transcribed.errors import ShutdownRequested
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


class StreamProgress(NamedTuple):
    """How far a recording's transcription has come, in seconds of its audio."""

    done: float  # transcribed, from the start: every chunk up to here is answered
    # The end of the oldest chunk still with the model (None when none is): the next answer
    # confirms at least this much, so an estimate between answers may approach it, not pass.
    next_at_least: float | None


class WordAligner(Protocol):
    """Word timing for a piece of audio and its text: `aligner.Aligner` in production."""

    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]: ...


class Recognizer(Protocol):
    """What the pipeline needs of the model: `engine.Engine` in production."""

    info: ModelInfo

    @property
    def batch_size(self) -> int:
        """Chunks per model call: how many the pipeline gathers before calling a recognizer
        that is not a `StreamingRecognizer`."""

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = ...,
    ) -> list[ChunkText]: ...


@runtime_checkable
class StreamingRecognizer(Protocol):
    """A recognizer that takes chunks one at a time, from any thread, as they are cut, and
    answers each when it is done: the vLLM servers (`RemoteEngine`), or the resident model
    behind its model thread (`SharedRecognizer`), which merges the chunks waiting from every
    recording into its batches."""

    @property
    def window(self) -> int:
        """Chunks a recording keeps in flight (asked again before each one is sent: the
        vLLM engine's share follows the recordings running)."""

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        """Start on `chunk`; cancelling the Future gives it up if it has not started."""


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
    on_progress: Callable[[StreamProgress], None] = lambda progress: None,
    started: float | None = None,
) -> Transcript:
    """A complete transcript of audio arriving as 16 kHz mono float32 blocks.

    Each chunk goes to the model as soon as it is cut, while decoding continues, and the
    recording keeps a window of chunks in flight: the next is sent as soon as one returns.
    Memory holds that window, not the recording: a 12-hour file needs no more than a
    1-minute one. A recognizer that only takes lists (not a `StreamingRecognizer`) gets its
    `batch_size` chunks at a time. With `speakers` (a diarizer stream) the audio reaches the
    chunker once the diarizer has judged it, chunks end at changes of speaker, and segments
    are labelled. `on_progress` hears how far it has come whenever that changes: a chunk
    answered, or one sent while none was with the model.
    """
    started = time.monotonic() if started is None else started
    chunker = StreamChunker(SAMPLE_RATE, chunk_seconds)
    track = SpeakerTrack(speakers, max_speakers) if speakers is not None else None
    segments: list[Segment] = []
    pauses = PauseTracker()
    window = _Window(_streaming(recognizer, should_stop), language, context, should_stop)
    reported = StreamProgress(0.0, None)

    def finish(done: list[Recognized]) -> None:
        nonlocal reported
        for found, piece in done:
            segments.extend(_finish(found, [piece], aligner, pauses, track))
        now = StreamProgress(segments[-1].end if segments else 0.0, window.next_at_least())
        if now != reported:
            reported = now
            on_progress(now)

    try:
        for block in blocks:
            cut = chunker.feed(*track.feed(block)) if track is not None else chunker.feed(block)
            for piece in cut:
                finish(window.send(piece))
            finish(window.done())
        last = chunker.feed(*track.finish()) if track is not None else []
        for piece in [*last, *chunker.finish()]:
            finish(window.send(piece))
        finish(window.drain())
    finally:
        window.close()
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


Piece = tuple[int, np.ndarray]  # a chunk and its first sample's position in the recording
Recognized = tuple[list[Segment], Piece]
_POLL_SECONDS = 0.2  # how often a wait for answers looks at `should_stop` (the heartbeat)


class _Sink(Protocol):
    """Where the window sends chunks: a `StreamingRecognizer`, or `_Batched` around one
    that takes lists."""

    @property
    def window(self) -> int: ...

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]": ...

    def flush(self) -> None: ...


class _Direct:
    """A `StreamingRecognizer` as a sink: chunks go out as they are sent."""

    def __init__(self, recognizer: StreamingRecognizer) -> None:
        self._recognizer = recognizer
        self.submit = recognizer.submit

    @property
    def window(self) -> int:
        return max(1, self._recognizer.window)

    def flush(self) -> None:
        """Nothing waits here: every chunk is on its way."""


class _Batched:
    """A recognizer that transcribes lists on the caller's thread (the resident model used
    directly, by `transcribe`): chunks are gathered into lists of its `batch_size`, run when
    one is full or when the pipeline waits for an answer."""

    def __init__(self, recognizer: Recognizer, should_stop: Callable[[], bool]) -> None:
        self._recognizer = recognizer
        self._should_stop = should_stop
        self._waiting: list[tuple[np.ndarray, str | None, str | None, Future[ChunkText]]] = []

    @property
    def window(self) -> int:
        return max(1, self._recognizer.batch_size)

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        answer: Future[ChunkText] = Future()
        self._waiting.append((chunk, language, context, answer))
        if len(self._waiting) >= self.window:
            self.flush()
        return answer

    def flush(self) -> None:
        """Run what waits, one call per language and context (a recording has one)."""
        while self._waiting:
            _, language, context, _ = self._waiting[0]
            same = [w for w in self._waiting if (w[1], w[2]) == (language, context)]
            self._waiting = [w for w in self._waiting if (w[1], w[2]) != (language, context)]
            try:
                texts = self._recognizer.transcribe(
                    [w[0] for w in same], language, context, should_stop=self._should_stop
                )
            except BaseException as error:
                for *_, answer in same:
                    answer.set_exception(error)
                continue
            for (*_, answer), text in zip(same, texts, strict=True):
                answer.set_result(text)


def _streaming(recognizer: Recognizer, should_stop: Callable[[], bool]) -> _Sink:
    if isinstance(recognizer, StreamingRecognizer):
        return _Direct(recognizer)
    return _Batched(recognizer, should_stop)


@dataclasses.dataclass(eq=False)
class _InFlight:
    """A piece sent to the model: one answer, or two once a truncated one is retried in
    halves (`halves`: their bounds within the piece)."""

    piece: Piece
    answers: list["Future[ChunkText]"]
    halves: list[tuple[int, int]] | None = None


class _Window:
    """A recording's chunks in flight, in order. `send` waits while `window` of them are
    unanswered and sends the next as soon as one is answered; finished pieces come back in
    order, however the answers arrive. Silent chunks skip the model (it tends to invent text
    for silence); a chunk whose text hit the token budget is sent again in two halves (cut at
    a quiet point), once."""

    def __init__(
        self,
        sink: _Sink,
        language: str | None,
        context: str | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self._sink, self._language, self._context = sink, language, context
        self._should_stop = should_stop
        self._pieces: deque[_InFlight] = deque()

    def send(self, piece: Piece) -> list[Recognized]:
        """Send `piece` once the window has room; the pieces finished by now, in order."""
        finished = self.done()
        limit = self._sink.window
        # Answered pieces held behind a slow one are bounded too: memory stays two windows.
        while (busy := self._unanswered()) and (
            len(busy) >= limit or len(self._pieces) >= 2 * limit
        ):
            self._wait(busy if len(busy) >= limit else self._unanswered(self._pieces[0]))
            finished += self.done()
        _start, chunk = piece
        if _is_silent(chunk):
            answers = [_answered(ChunkText("", None, False, no_speech=True))]
        else:
            answers = [self._sink.submit(chunk, self._language, self._context)]
        self._pieces.append(_InFlight(piece, answers))
        return finished + self.done()

    def next_at_least(self) -> float | None:
        """The end of the oldest piece still in flight, in seconds (None: none is)."""
        if not self._pieces:
            return None
        start, chunk = self._pieces[0].piece
        return (start + len(chunk)) / SAMPLE_RATE

    def done(self) -> list[Recognized]:
        """The pieces at the front whose answers are all in, in order. A failed answer
        anywhere fails the recording at once: the rest is not waited for."""
        for flight in self._pieces:
            for answer in flight.answers:
                if answer.done():
                    _raise_error(answer)
        finished = []
        while self._pieces and all(answer.done() for answer in self._pieces[0].answers):
            head = self._pieces[0]
            if self._retry_in_halves(head):
                break
            self._pieces.popleft()
            finished.append((self._segments(head), head.piece))
        return finished

    def drain(self) -> list[Recognized]:
        """Every piece, once all are answered."""
        finished = self.done()
        while self._pieces:
            self._wait(self._unanswered(self._pieces[0]))
            finished += self.done()
        return finished

    def close(self) -> None:
        """After an error or a stop: what has not started need not run."""
        for flight in self._pieces:
            for answer in flight.answers:
                answer.cancel()

    def _unanswered(self, *only: _InFlight) -> list["Future[ChunkText]"]:
        return [a for flight in only or self._pieces for a in flight.answers if not a.done()]

    def _wait(self, answers: list["Future[ChunkText]"]) -> None:
        """Until one of `answers` is in (and raise its error), looking at `should_stop`."""
        if not answers:
            return
        self._sink.flush()
        while True:
            if self._should_stop():
                raise ShutdownRequested("stopping while chunks were with the model")
            done, _ = wait(answers, _POLL_SECONDS, return_when=FIRST_COMPLETED)
            if done:
                for answer in done:
                    _raise_error(answer)
                return

    def _retry_in_halves(self, flight: _InFlight) -> bool:
        """Send a truncated piece again in halves (True), once, when it is long enough."""
        chunk = flight.piece[1]
        if flight.halves is not None or len(chunk) < 2 * _MIN_RETRY_SAMPLES:
            return False
        if not _result(flight.answers[0]).truncated:
            return False
        flight.halves = plan_chunks(chunk, SAMPLE_RATE, len(chunk) / 2 / SAMPLE_RATE + 1)
        flight.answers = [
            self._sink.submit(chunk[a:b], self._language, self._context) for a, b in flight.halves
        ]
        return True

    def _segments(self, flight: _InFlight) -> list[Segment]:
        start, chunk = flight.piece
        if flight.halves is None:
            return [_segment(start, chunk, _result(flight.answers[0]))]
        return [
            _segment(start + a, chunk[a:b], _result(answer))
            for (a, b), answer in zip(flight.halves, flight.answers, strict=True)
        ]


def _answered(text: ChunkText) -> "Future[ChunkText]":
    answer: Future[ChunkText] = Future()
    answer.set_result(text)
    return answer


def _raise_error(answer: "Future[ChunkText]") -> None:
    if answer.cancelled():  # the engine is closing: its requests were called off
        raise ShutdownRequested("the engine stopped while chunks were with it")
    if (error := answer.exception()) is not None:
        raise error


def _result(answer: "Future[ChunkText]") -> ChunkText:
    _raise_error(answer)
    return answer.result()


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
