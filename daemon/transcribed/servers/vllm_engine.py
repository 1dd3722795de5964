"""The vLLM engine: chunks transcribed by a pool of vLLM servers instead of a resident model.

A drop-in `Recognizer` for the pipeline: chunking, the halving retry of truncated chunks,
no-speech detection and the transcript format stay the daemon's own. Each chunk travels as
one chat-completion request with its audio inline (`input_audio`, a 16-bit WAV), built as
transformers' `apply_transcription_request` builds the resident model's prompt: the context
as the system turn, the audio as the user turn, a forced language prefilled into the
assistant turn. The server's answer is the model's raw `language X<asr_text>text`, read by
the same parser as the resident model's (`raw_answer`); `logprobs` give the language
confidence and `finish_reason = "length"` marks truncation.

Unlike the resident model, which runs one merged batch at a time on one thread, the servers
batch for themselves (continuous batching): every job thread sends its chunks straight to
the pool, and many requests are in flight at once.
"""

import base64
import contextlib
import io
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any

import numpy as np
import soundfile

from transcribed.audio.formats import SAMPLE_RATE
from transcribed.errors import ConfigError, ShutdownRequested
from transcribed.logs import get_logger
from transcribed.model.engine import token_budget
from transcribed.model.raw_answer import MARKER, LanguageNames, parse_answer
from transcribed.model.scoring import LANGUAGE_STEPS, language_confidence
from transcribed.output.transcript import ChunkText, ModelInfo
from transcribed.servers.server_pool import PoolSettings, ServerPool, read_api_key, tls_context
from transcribed.settings import ModelSettings

CHAT_PATH = "/v1/chat/completions"
_SILENCE = np.zeros(SAMPLE_RATE // 2, np.float32)  # what a down server is asked to transcribe
_STOP_POLL_SECONDS = 0.2
POOL_CHECK_SECONDS = 1.0  # how often the model thread looks at the pool's own thread

log = get_logger(__name__)


def pool_settings(settings: ModelSettings) -> PoolSettings:
    """The pool's settings, the key read from its file; ConfigError when a file is unusable."""
    try:
        key = read_api_key(settings.vllm_api_key_file)
        tls_context(settings.vllm_ca_file)  # a bad CA file is a config error, said at start
    except ValueError as error:
        raise ConfigError(str(error)) from None
    silence = {
        "type": "input_audio",
        "input_audio": {"data": wav_base64(_SILENCE), "format": "wav"},
    }
    probe = {
        "model": settings.model,
        "messages": [{"role": "user", "content": [silence]}],
        "max_tokens": 1,
        "temperature": 0,
    }
    return PoolSettings(
        servers=tuple(settings.vllm_servers),
        model=settings.model,
        probe=(CHAT_PATH, probe),
        api_key=key,
        ca_file=settings.vllm_ca_file,
        max_in_flight=settings.vllm_max_in_flight,
        timeout_seconds=settings.vllm_timeout_seconds,
        connect_timeout_seconds=settings.vllm_connect_seconds,
    )


# Chunks in flight per server that the recordings being transcribed hold between them, as a
# multiple of vllm_max_in_flight: each recording waits for its slowest chunk before it sends
# its next batch, so the others must have enough queued to keep every server full meanwhile.
IN_FLIGHT_RESERVE = 2
_MOST_PER_RECORDING = 256


def recording_batch(settings: ModelSettings, jobs_at_once: int) -> int:
    """Chunks each recording sends at once: enough for the recordings at once to keep every
    server at its cap (`IN_FLIGHT_RESERVE`), at least `batch_size`."""
    wanted = IN_FLIGHT_RESERVE * len(settings.vllm_servers) * settings.vllm_max_in_flight
    return _share(wanted, jobs_at_once, settings.batch_size)


def _share(wanted: int, recordings: int, least: int) -> int:
    return max(least, min(math.ceil(wanted / max(recordings, 1)), _MOST_PER_RECORDING))


def wav_base64(chunk: np.ndarray) -> str:
    """16 kHz mono 16-bit WAV, base64: what `input_audio` carries (16-bit is far below the
    noise of any recording, and half the bytes of float)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, chunk, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteEngine:
    """A `Recognizer` whose model runs on vLLM servers; also what the daemon's workers share
    (`job`, `serve`, `busy_for`), in place of the resident model's `SharedRecognizer`."""

    def __init__(self, pool: ServerPool, batch_size: int, stop: threading.Event) -> None:
        self.pool = pool
        self._least_batch = batch_size  # chunks a recording sends at once, all jobs running
        self._wanted_in_flight = IN_FLIGHT_RESERVE * len(pool.servers) * pool.settings.max_in_flight
        self._active_jobs = 0
        self._jobs_changed = threading.Lock()
        # Calls from many threads at once are welcome: a recording's next batch is decoded
        # while its last is with the servers (pipeline._Flight).
        self.concurrent = True
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
        batch_size: int,
        stop: threading.Event,
        on_change: Callable[[list[dict[str, Any]]], None] = lambda servers: None,
    ) -> "RemoteEngine":
        """Check every server once and start the pool; servers that are down now are probed
        until they come up (jobs wait meanwhile)."""
        pool = ServerPool(pool_settings(settings), on_change=on_change)
        pool.start()
        return cls(pool, batch_size, stop)

    @property
    def batch_size(self) -> int:
        """Chunks a recording sends at once: its share of what keeps every server full, among
        the recordings running now. At the end of a backlog the last few recordings take the
        whole share, instead of leaving the servers idle while they finish."""
        return _share(self._wanted_in_flight, self._active_jobs, self._least_batch)

    # --- Recognizer -----------------------------------------------------------------------

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        """Text for each chunk, in input order; all of them in flight at once."""
        futures = [self.pool.submit(CHAT_PATH, self.request(c, language, context)) for c in chunks]
        try:
            self._wait(futures, should_stop)
            answers = [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # on an error or a stop: the rest need not run
        return [self.parse(answer, language, context) for answer in answers]

    def _wait(self, futures: list["Future[Any]"], should_stop: Callable[[], bool]) -> None:
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
        seconds = len(chunk) / SAMPLE_RATE
        messages: list[dict[str, Any]] = []
        if context:
            messages.append({"role": "system", "content": [{"type": "text", "text": context}]})
        audio = {"data": wav_base64(chunk), "format": "wav"}
        messages.append(
            {"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}
        )
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

    def parse(self, answer: dict[str, Any], forced: str | None, context: str | None) -> ChunkText:
        """A chat completion's first choice, read like the resident model's output."""
        choice = answer["choices"][0]
        steps = ((choice.get("logprobs") or {}).get("content") or [])[:LANGUAGE_STEPS]
        confidence = language_confidence(
            [step.get("token") for step in steps], [step["logprob"] for step in steps], MARKER
        )
        return parse_answer(
            choice["message"].get("content") or "",
            ended=choice.get("finish_reason") != "length",
            confidence=None if forced else confidence,
            forced=forced,
            context=context,
            names=self._names,
        )

    # --- what the daemon's workers share ------------------------------------------------

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Brackets one job (its requests go out at once; there is nothing to gather), so
        that `batch_size` knows how many recordings share the servers."""
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
        return 0.0  # a hung request ends at vllm_timeout_seconds and is retried elsewhere

    def warm_up(self) -> None:
        """Nothing to compile here; kept for the benchmark, which warms every engine."""

    def summary(self) -> str:
        return self.pool.summary()
