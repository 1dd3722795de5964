"""Batching across recordings: several jobs run at once and their chunks share model calls.

Each job runs the ordinary per-recording pipeline on its own thread, with its own decoder
process decoding and resampling ahead. Its calls to the model go to `SharedRecognizer`,
which merges the chunks every job is waiting on into one call (longest first, so batches pad
little), runs it on the single model thread, and hands each job back exactly its own
results. A recording with two chunks no longer leaves the rest of a GPU batch empty.

Chunks of different languages or contexts are never merged (the prompt differs). When a
merged call fails for a reason other than shutdown or memory, each job's chunks are retried
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
from transcribed.model.pipeline import Recognizer, WordAligner
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


class SharedRecognizer:
    """A `Recognizer` many job threads call at once; `serve` runs the model on one thread."""

    def __init__(self, model: Recognizer, stop: threading.Event) -> None:
        self._model = model
        self._stop = stop
        self.info: ModelInfo = model.info
        self.batch_size = model.batch_size
        self._pending: list[_Request] = []
        self._callers = 0  # job threads inside transcribe(): waiting or about to be
        self._active_jobs = 0
        self._changed = threading.Condition()
        self._busy_since: float | None = None
        self.merged_calls = 0  # calls that carried chunks of more than one job

    # --- job threads --------------------------------------------------------------------

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

    @property
    def window(self) -> int:
        """Chunks each recording keeps waiting for the model (`StreamingRecognizer`)."""
        return self.batch_size

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
        """Seconds the current model call has run (0 when idle): a hung GPU call shows here."""
        busy = self._busy_since
        return 0.0 if busy is None else time.monotonic() - busy

    def _gather(self) -> list[_Request]:
        """The requests to run together: all waiting ones sharing the oldest one's language
        and context. Waits briefly for more while a batch is not full and other jobs are
        still decoding toward their next call."""
        with self._changed:
            self._pending = [r for r in self._pending if not _given_up(r)]
            if not self._pending:
                self._changed.wait(0.5)
                return []
            deadline = time.monotonic() + GATHER_SECONDS
            while self._worth_waiting() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            key = self._pending[0].key
            batch = [request for request in self._pending if request.key == key]
            for request in batch:
                request.taken = True
                self._pending.remove(request)
            return [request for request in batch if _starts(request)]

    def _worth_waiting(self) -> bool:
        """While a batch is not full and some running job may still send chunks: one that
        waits in `transcribe` cannot, nor can one whose window is all waiting here."""
        waiting_chunks = sum(len(request.chunks) for request in self._pending)
        per_job: dict[int, int] = {}
        for request in self._pending:
            more = self.window if request.answer is None else len(request.chunks)
            per_job[request.owner] = per_job.get(request.owner, 0) + more
        done_sending = sum(count >= self.window for count in per_job.values())
        return waiting_chunks < self.batch_size and done_sending < self._active_jobs

    def _run(self, batch: list[_Request]) -> None:
        self._busy_since = time.monotonic()
        try:
            if len(batch) > 1:
                self.merged_calls += 1
            self._call(batch)
        finally:
            self._busy_since = None

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


class SerializedAligner:
    """The word-timing model, shared by the job threads one call at a time."""

    def __init__(self, aligner: WordAligner) -> None:
        self._aligner = aligner
        self._lock = threading.Lock()

    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]:
        with self._lock:
            return self._aligner.align(audio, text, language)
