"""Batching across recordings: several jobs run at once and their chunks share model calls.

Each job runs the ordinary per-recording pipeline on its own thread, with its own decoder
process decoding and resampling ahead. It keeps a window of chunks in flight (`submit`, one
chunk at a time, the next sent as soon as one is answered) with `SharedRecognizer`, which
runs them on the single model thread and hands each job back exactly its own results.

With the resident engine (`rows.RowEngine`) a model call never closes: every chunk any job
is waiting on is a row of the decode loop, up to the batch ceiling, and as rows end their
slots take the chunks that arrived meanwhile, whatever recording they come from (rows of
another language or context included: each row has its own prompt). With another model,
each call takes every waiting chunk of one language and context, up to the ceiling.

When a call fails for a reason other than shutdown or memory, each job's chunks are retried
alone, so a chunk that breaks the model fails only its own job.
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from transcribed.errors import ShutdownRequested, TransientError
from transcribed.logs import get_logger
from transcribed.model.decoding import Row
from transcribed.model.pipeline import Recognizer, WordAligner
from transcribed.model.rows import RowEngine
from transcribed.output.transcript import ChunkText, ModelInfo, Word

log = get_logger(__name__)

# How long the model thread waits for other jobs' chunks before running a batch that is not
# full: short next to a model call, long enough for a decoder to deliver its next chunk.
GATHER_SECONDS = 0.05


class SharedModel(Recognizer, Protocol):
    """What the daemon's workers share: `SharedRecognizer` over the resident model, or
    `vllm_engine.RemoteEngine`, whose servers batch for themselves."""

    def job(self) -> contextlib.AbstractContextManager[None]: ...

    def serve(self) -> None: ...

    def busy_for(self) -> float: ...


@dataclass(eq=False)
class _Request:
    chunks: list[np.ndarray]
    language: str | None
    context: str | None
    results: list[ChunkText] = field(default_factory=list)
    error: BaseException | None = None
    taken: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    answered: dict[int, ChunkText] = field(default_factory=dict)
    # `submit`'s: the one chunk's answer (a cancelled one is dropped before it runs).
    answer: "Future[ChunkText] | None" = None
    owner: int = field(default_factory=threading.get_ident)  # the job thread that sent it

    @property
    def key(self) -> tuple[str | None, str | None]:
        return self.language, self.context

    def settle(self, error: BaseException | None) -> None:
        self.error = error
        self.done.set()
        if self.answer is None or self.answer.done():
            return
        if error is not None:
            self.answer.set_exception(error)
        else:
            self.answer.set_result(self.results[0])

    def rows(self) -> list[Row]:
        return [
            Row(chunk, self.language, self.context, tag=(self, index))
            for index, chunk in enumerate(self.chunks)
        ]


class SharedRecognizer:
    """A `Recognizer` many job threads call at once; `serve` runs the model on one thread."""

    def __init__(self, model: Recognizer, stop: threading.Event) -> None:
        self._model = model
        self._stop = stop
        self.info: ModelInfo = model.info
        # Chunks in one model call at most: the engine's batch ceiling.
        self.ceiling = int(getattr(model, "ceiling", model.batch_size))
        self._pending: list[_Request] = []
        self._callers = 0  # job threads inside transcribe(): waiting or about to be
        self._active_jobs = 0
        self._changed = threading.Condition()
        self._busy_since: float | None = None
        self.merged_calls = 0  # calls that carried chunks of more than one job

    @property
    def batch_size(self) -> int:
        """The model's: chunks each recording gathers before it asks."""
        return self._model.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._model.batch_size = value  # type: ignore[misc]  # the engines' is plain

    # --- job threads --------------------------------------------------------------------

    @property
    def window(self) -> int:
        """Chunks each recording keeps waiting for the model (`StreamingRecognizer`)."""
        return self.batch_size

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Brackets one job's transcription: while it runs, the model thread may wait a
        moment for its chunks to fill a batch."""
        with self._changed:
            self._active_jobs += 1
        try:
            yield
        finally:
            with self._changed:
                self._active_jobs -= 1
                self._changed.notify_all()

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        """Queue one chunk for the model thread, which merges it with every job's waiting
        chunks; the Future gives its text. Cancelled before the model takes it, it is
        dropped."""
        answer: Future[ChunkText] = Future()
        request = _Request([chunk], language, context, answer=answer)
        with self._changed:
            self._pending.append(request)
            self._changed.notify_all()
        return answer

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        request = _Request(list(chunks), language, context)
        with self._changed:
            self._pending.append(request)
            self._changed.notify_all()
        while not request.done.wait(0.2):
            with self._changed:
                if (self._stop.is_set() or should_stop()) and not request.taken:
                    self._pending.remove(request)
                    raise ShutdownRequested("stopping before this batch ran")
        if request.error is not None:
            raise request.error
        return request.results

    # --- the model thread ---------------------------------------------------------------

    def serve(self) -> None:
        """Run merged model calls until stopped; pending requests then end in shutdown."""
        while not self._stop.is_set():
            batch = self._gather()
            if batch:
                self._run(batch)
        with self._changed:
            for request in self._pending:
                request.settle(ShutdownRequested("stopping"))
            self._pending.clear()

    def busy_for(self) -> float:
        """Seconds the current model call has gone without progress (0 when idle): a hung
        GPU call shows here. A decode loop fed for an hour is one call; each row it takes
        or answers counts as progress."""
        busy = self._busy_since
        return 0.0 if busy is None else time.monotonic() - busy

    def progressed(self) -> None:
        if self._busy_since is not None:
            self._busy_since = time.monotonic()

    def _gather(self) -> list[_Request]:
        """The requests for the next call: every waiting one up to the ceiling's worth of
        chunks (of the oldest one's language and context, unless the engine takes rows of
        any). Waits briefly for more while that is short of the ceiling and other jobs are
        still decoding toward their next call."""
        with self._changed:
            self._pending = [r for r in self._pending if not _given_up(r)]
            if not self._pending:
                self._changed.wait(0.5)
                return []
            deadline = time.monotonic() + GATHER_SECONDS
            while self._worth_waiting() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return self._take_requests(self.ceiling, any_key=self._streams)

    @property
    def _streams(self) -> bool:
        return isinstance(self._model, RowEngine)

    def _take_requests(self, chunks: int, any_key: bool) -> list[_Request]:
        """Waiting requests, oldest first, up to `chunks` chunks (at least one request);
        those given up (a cancelled `submit`) are dropped. Call with the lock held."""
        self._pending = [r for r in self._pending if not _given_up(r)]
        key = self._pending[0].key if self._pending else None
        batch: list[_Request] = []
        for request in list(self._pending):
            if not any_key and request.key != key:
                continue
            if batch and len(request.chunks) > chunks:
                break
            request.taken = True
            self._pending.remove(request)
            if _starts(request):
                batch.append(request)
                chunks -= len(request.chunks)
        return batch

    def _worth_waiting(self) -> bool:
        """While a call is not full and some running job may still send chunks: one that
        waits in `transcribe` cannot, nor can one whose window is all waiting here."""
        waiting_chunks = sum(len(request.chunks) for request in self._pending)
        per_job: dict[int, int] = {}
        for request in self._pending:
            more = self.window if request.answer is None else len(request.chunks)
            per_job[request.owner] = per_job.get(request.owner, 0) + more
        done_sending = sum(count >= self.window for count in per_job.values())
        return waiting_chunks < self.ceiling and done_sending < self._active_jobs

    def _run(self, batch: list[_Request]) -> None:
        self._busy_since = time.monotonic()
        try:
            if len(batch) > 1:
                self.merged_calls += 1
            if self._streams:
                self._stream(batch)
            else:
                self._call(batch)
        finally:
            self._busy_since = None

    def _stream(self, batch: list[_Request]) -> None:
        """One decode loop fed with these requests' rows and then with every request that
        arrives while it runs, until none is left."""
        assert isinstance(self._model, RowEngine)
        feed = _Feed(self, batch)
        try:
            self._model.run_rows(feed, self._stop.is_set)
        except (ShutdownRequested, TransientError) as error:
            _finish(feed.unfinished(), error=error)
        except Exception as error:
            unfinished = feed.unfinished()
            log.warning(
                "batch.merged_call_failed", jobs=len(unfinished), error=type(error).__name__
            )
            for request in unfinished:  # find the job whose chunk breaks the model
                request.answered.clear()
                self._call([request])

    def taken_for_stream(self, most: int) -> list[_Request]:
        """Requests that arrived while a decode loop runs: up to `most` chunks' worth."""
        with self._changed:
            if not self._pending or most <= 0:
                return []
            return self._take_requests(most, any_key=True)

    def _call(self, batch: list[_Request]) -> None:
        chunks = [chunk for request in batch for chunk in request.chunks]
        first = batch[0]
        try:
            texts = self._model.transcribe(
                chunks, first.language, first.context, should_stop=self._stop.is_set
            )
        except (ShutdownRequested, TransientError) as error:
            _finish(batch, error=error)
            return
        except Exception as error:
            if len(batch) == 1:
                _finish(batch, error=error)
                return
            # Find the job whose chunk breaks the model: run each job's chunks alone.
            log.warning("batch.merged_call_failed", jobs=len(batch), error=type(error).__name__)
            for request in batch:
                self._call([request])
            return
        offset = 0
        for request in batch:
            request.results = texts[offset : offset + len(request.chunks)]
            offset += len(request.chunks)
        _finish(batch)


def _finish(batch: list[_Request], error: BaseException | None = None) -> None:
    for request in batch:
        request.settle(error)


def _given_up(request: _Request) -> bool:
    return request.answer is not None and request.answer.cancelled()


def _starts(request: _Request) -> bool:
    """Taken by the model thread: from now on its answer can no longer be cancelled."""
    return request.answer is None or request.answer.set_running_or_notify_cancel()


class _Feed:
    """The decode loop's rows: those of the requests taken, then of requests that arrive
    while it runs. A request is done when its last row is answered."""

    def __init__(self, shared: SharedRecognizer, requests: list[_Request]) -> None:
        self._shared = shared
        self._requests = list(requests)
        self._rows = [row for request in requests for row in request.rows()]

    def take(self, count: int) -> list[Row]:
        if len(self._rows) < count:
            # Answered requests leave: the loop may run for a whole recording, and each holds
            # its chunk's audio (memory would grow with the recording's length).
            self._requests = self.unfinished()
            for request in self._shared.taken_for_stream(count - len(self._rows)):
                self._requests.append(request)
                self._rows += request.rows()
        taken, self._rows = self._rows[:count], self._rows[count:]
        if taken:
            self._shared.progressed()
        return taken

    def done(self, row: Row, text: ChunkText) -> None:
        self._shared.progressed()
        request, index = _origin(row)
        if request.done.is_set():
            return  # failed already: its other rows' answers are not wanted
        request.answered[index] = text
        if len(request.answered) == len(request.chunks):
            request.results = [request.answered[i] for i in range(len(request.chunks))]
            _finish([request])

    def failed(self, row: Row, error: BaseException) -> None:
        request, _index = _origin(row)
        if not request.done.is_set():
            _finish([request], error=error)

    def unfinished(self) -> list[_Request]:
        return [request for request in self._requests if not request.done.is_set()]


def _origin(row: Row) -> tuple[_Request, int]:
    tag = row.tag
    assert isinstance(tag, tuple)  # (request, index): set by _Request.rows
    return tag[0], tag[1]


class SerializedAligner:
    """The word-timing model, shared by the job threads one call at a time."""

    def __init__(self, aligner: WordAligner) -> None:
        self._aligner = aligner
        self._lock = threading.Lock()

    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]:
        with self._lock:
            return self._aligner.align(audio, text, language)
