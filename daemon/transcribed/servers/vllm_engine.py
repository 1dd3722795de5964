"""The vLLM engine: chunks transcribed by a pool of vLLM servers instead of a resident model.

A drop-in `StreamingRecognizer` for the pipeline: chunking, the halving retry of truncated chunks,
no-speech detection and the transcript format stay the daemon's own. Each chunk travels as
one chat-completion request with its audio inline (`input_audio`, a 16-bit WAV), built as
transformers' `apply_transcription_request` builds the resident model's prompt: the context
as the system turn, the audio as the user turn, a forced language prefilled into the
assistant turn. The server's answer is the model's raw `language X<asr_text>text`, read by
the same parser as the resident model's (`raw_answer`) once its shape is checked
(`chat_answer`: an answer that is not a transcription is the server's failure); `logprobs`
give the language confidence and `finish_reason = "length"` marks truncation.

Unlike the resident model, which runs one merged batch at a time on one thread, the servers
batch for themselves (continuous batching): every recording sends each chunk straight to the
pool as it is cut, keeping a window of them in flight, and many requests are out at once.
"""

import contextlib
import functools
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any

import numpy as np

from transcribed.audio.formats import SAMPLE_RATE
from transcribed.errors import ConfigError, ShutdownRequested
from transcribed.logs import get_logger
from transcribed.model.raw_answer import MARKER, LanguageNames, parse_answer
from transcribed.model.scoring import language_confidence
from transcribed.model.token_budget import token_budget
from transcribed.output.transcript import ChunkText, ModelInfo
from transcribed.servers.chat_answer import check_transcription, read_reply
from transcribed.servers.chat_request import audio_part, placeholder, wav_base64, with_audio
from transcribed.servers.server_pool import (
    PoolSettings,
    Probe,
    ServerPool,
    read_api_key,
    tls_context,
)
from transcribed.settings import ModelSettings

CHAT_PATH = "/v1/chat/completions"
_SILENCE = np.zeros(SAMPLE_RATE // 2, np.float32)  # what a down server is asked to transcribe
_STOP_POLL_SECONDS = 0.2
POOL_CHECK_SECONDS = 1.0  # how often the model thread looks at the pool's own thread
# An answer's bytes per token it may write, at most: vLLM writes about 150 for a token with
# its log-probability and the top alternative; past this many, no real answer is coming.
_ANSWER_BYTES_PER_TOKEN = 1024
_ANSWER_BYTES_FIXED = 64 * 1024

log = get_logger(__name__)


def pool_settings(settings: ModelSettings) -> PoolSettings:
    """The pool's settings, the key read from its file; ConfigError when a file is unusable."""
    try:
        key = read_api_key(settings.vllm_api_key_file)
        tls_context(settings.vllm_ca_file)  # a bad CA file is a config error, said at start
    except ValueError as error:
        raise ConfigError(str(error)) from None
    probe = {
        "model": settings.model,
        "messages": [{"role": "user", "content": [audio_part(wav_base64(_SILENCE).decode())]}],
        "max_tokens": 8,  # enough for "language None<asr_text>", the answer to silence
        "temperature": 0,
    }
    most_tokens = token_budget(settings.chunk_seconds)
    return PoolSettings(
        servers=tuple(settings.vllm_servers),
        model=settings.model,
        probe=Probe(CHAT_PATH, json_bytes(probe), _transcription),
        api_key=key,
        ca_file=settings.vllm_ca_file,
        max_in_flight=settings.vllm_max_in_flight,
        timeout_seconds=settings.vllm_timeout_seconds,
        connect_timeout_seconds=settings.vllm_connect_seconds,
        max_answer_bytes=_ANSWER_BYTES_FIXED + most_tokens * _ANSWER_BYTES_PER_TOKEN,
    )


def _transcription(answer: Any) -> None:
    """A probe's answer must be a transcription too: a chat model served under the name
    would otherwise come back up after every fall, and fail three chunks each time."""
    check_transcription(read_reply(answer), forced=None)


def json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


# Chunks in flight that the recordings being transcribed hold between them, as a multiple of
# what the servers take at once (servers x vllm_max_in_flight): a recording sends its next
# chunk as soon as one returns, so little more than the servers hold keeps them full, and
# what waits beyond it waits in the daemon's memory.
IN_FLIGHT_RESERVE = 1.5
_MOST_PER_RECORDING = 1024


def recording_batch(settings: ModelSettings, jobs_at_once: int) -> int:
    """The least window of chunks each recording keeps in flight: its share of what keeps
    every server full with `jobs_at_once` recordings running, at least `batch_size`."""
    wanted = IN_FLIGHT_RESERVE * len(settings.vllm_servers) * settings.vllm_max_in_flight
    return _share(wanted, jobs_at_once, settings.batch_size)


def _share(wanted: float, recordings: int, least: int) -> int:
    return max(least, min(math.ceil(wanted / max(recordings, 1)), _MOST_PER_RECORDING))


class RemoteEngine:
    """A `StreamingRecognizer` whose model runs on vLLM servers; also what the daemon's
    workers share (`job`, `serve`, `busy_for`), in place of the resident model's
    `SharedRecognizer`."""

    def __init__(self, pool: ServerPool, least_window: int, stop: threading.Event) -> None:
        self.pool = pool
        self._least_window = least_window  # chunks a recording keeps in flight, all jobs running
        self._wanted_in_flight = IN_FLIGHT_RESERVE * len(pool.servers) * pool.settings.max_in_flight
        self._active_jobs = 0
        self._jobs_changed = threading.Lock()
        # What a bench reports as chunks per call: all the pool holds in flight.
        self.ceiling = len(pool.servers) * pool.settings.max_in_flight
        self.info = ModelInfo(id=pool.settings.model, device="vllm", dtype="auto")
        self._stop = stop
        self._names = LanguageNames()
        # Benchmarks with random weights: write exactly this many tokens per audio second.
        self.fixed_tokens_per_second: float | None = None

    @classmethod
    def connect(
        cls,
        settings: ModelSettings,
        least_window: int,
        stop: threading.Event,
        on_change: Callable[[list[dict[str, Any]]], None] = lambda servers: None,
    ) -> "RemoteEngine":
        """Check every server once and start the pool; servers that are down now are probed
        until they come up (jobs wait meanwhile)."""
        pool = ServerPool(pool_settings(settings), on_change=on_change)
        pool.start()
        return cls(pool, least_window, stop)

    @property
    def window(self) -> int:
        """Chunks a recording keeps in flight: its share of what keeps every server full,
        among the recordings running now. At the end of a backlog the last few recordings
        take the whole share, instead of leaving the servers idle while they finish."""
        return _share(self._wanted_in_flight, self._active_jobs, self._least_window)

    @property
    def batch_size(self) -> int:
        """For a caller that sends lists (`transcribe`): the window."""
        return self.window

    # --- StreamingRecognizer / Recognizer -------------------------------------------------

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        """Send one chunk to the least busy server; the Future gives its text."""
        read = functools.partial(self.read, forced=language, context=context)
        return self.pool.submit(CHAT_PATH, self.body(chunk, language, context), read)

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        """Text for each chunk, in input order; all of them in flight at once."""
        futures = [self.submit(chunk, language, context) for chunk in chunks]
        try:
            self._wait(futures, should_stop)
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # on an error or a stop: the rest need not run

    def _wait(self, futures: list["Future[ChunkText]"], should_stop: Callable[[], bool]) -> None:
        pending = set(futures)
        while pending:
            if should_stop() or self._stop.is_set():
                raise ShutdownRequested("stopping while engine servers were transcribing")
            done, pending = wait(pending, _STOP_POLL_SECONDS, return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                return  # `result()` raises it

    def request(
        self, chunk: np.ndarray, language: str | None, context: str | None
    ) -> dict[str, Any]:
        """The chat-completion request for one chunk: the prompt transformers would build."""
        return self._fields(len(chunk) / SAMPLE_RATE, language, context, wav_base64(chunk).decode())

    def body(self, chunk: np.ndarray, language: str | None, context: str | None) -> bytes:
        """`request` as the bytes sent (the audio spliced in, not JSON-encoded)."""
        return with_audio(self._fields(len(chunk) / SAMPLE_RATE, language, context), chunk)

    def _fields(
        self, seconds: float, language: str | None, context: str | None, audio: str | None = None
    ) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        if context:
            messages.append({"role": "system", "content": [{"type": "text", "text": context}]})
        part = audio_part(placeholder() if audio is None else audio)
        messages.append({"role": "user", "content": [part]})
        turn: dict[str, Any] = {"add_generation_prompt": True}
        if language:  # forced: the model continues after "language X<asr_text>"
            messages.append({"role": "assistant", "content": self._names.prefill(language)})
            turn = {"add_generation_prompt": False, "continue_final_message": True}
        length: dict[str, int] = {"max_tokens": token_budget(seconds)}
        if self.fixed_tokens_per_second:
            exact = max(1, math.ceil(seconds * self.fixed_tokens_per_second))
            length = {"max_tokens": exact, "min_tokens": exact}
        return {
            "model": self.info.id,
            "messages": messages,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 1,
            "skip_special_tokens": True,
            **length,
            **turn,
        }

    def read(self, answer: Any, forced: str | None, context: str | None) -> ChunkText:
        """A chat completion's first choice, checked (BadAnswer: the server's failure) and
        read like the resident model's output. Runs on the pool's loop as the answer comes."""
        reply = read_reply(answer)
        check_transcription(reply, forced)
        confidence = language_confidence(reply.tokens, reply.logprobs, MARKER)
        return parse_answer(
            self.pool.redact.key_only(reply.content),
            ended=reply.ended,
            confidence=None if forced else confidence,
            forced=forced,
            context=context,
            names=self._names,
        )

    def parse(self, answer: Any, forced: str | None, context: str | None) -> ChunkText:
        return self.read(answer, forced, context)

    # --- what the daemon's workers share ------------------------------------------------

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Brackets one job, so that `window` knows how many recordings share the servers."""
        with self._jobs_changed:
            self._active_jobs += 1
        try:
            yield
        finally:
            with self._jobs_changed:
                self._active_jobs -= 1

    def serve(self) -> None:
        """The daemon's model thread: the pool runs on a thread of its own, watched here (a
        pool that died ends this thread, and the supervisor's health check says so); the
        pool is closed at a stop."""
        while not self._stop.wait(POOL_CHECK_SECONDS):
            if not self.pool.running():
                log.error("engine.pool_stopped", hint="restart the daemon")
                return
        self.pool.close()

    def busy_for(self) -> float:
        return 0.0  # a request ends by vllm_timeout_seconds and is retried elsewhere

    def warm_up(self) -> None:
        """Nothing to compile here; kept for the benchmark, which warms every engine."""

    def summary(self) -> str:
        return self.pool.summary()
