"""A recording keeps a window of chunks in flight (issue 24): each chunk goes out as soon as it
is cut, the next as soon as one returns, never more than the window at once; decoding goes
on meanwhile, and the transcript is the same, in order, however the answers arrive."""

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError

import numpy as np
import pytest

from transcribed.audio.chunking import plan_chunks
from transcribed.errors import ShutdownRequested
from transcribed.model.pipeline import StreamProgress, transcribe_stream
from transcribed.output.transcript import ChunkText, ModelInfo, SourceInfo

RATE = 16000


class Servers:
    """A narrow fake `StreamingRecognizer`: the n-th chunk sent is answered on a timer thread
    after `delay(n)` seconds, with a text made from its samples; notes what happened when."""

    info = ModelInfo("servers", "vllm", "auto")
    batch_size = 2

    def __init__(self, window: int = 2, delay: object = lambda label: 0.2) -> None:
        self._window = window
        self.delay = delay
        self.log: list[str] = []
        self.out = 0
        self.most_out = 0
        self.samples_sent = 0
        self._lock = threading.Lock()

    @property
    def window(self) -> int:
        return self._window

    def submit(
        self, chunk: np.ndarray, language: str | None = None, context: str | None = None
    ) -> "Future[ChunkText]":
        answer: Future[ChunkText] = Future()
        with self._lock:
            number = sum(line.startswith("sent") for line in self.log)
            self.out += 1
            self.most_out = max(self.most_out, self.out)
            self.samples_sent += len(chunk)
            self.log.append(f"sent #{number}")

        def answered() -> None:
            with self._lock:
                self.out -= 1
                self.log.append(f"answered #{number}")
            with contextlib.suppress(InvalidStateError):  # called off meanwhile
                answer.set_result(_text(chunk))

        timer = threading.Timer(self.delay(number), answered)  # type: ignore[operator]
        timer.daemon = True
        timer.start()
        return answer

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        raise AssertionError("a streaming recognizer gets chunks one at a time")

    def note(self, what: str) -> None:
        with self._lock:
            self.log.append(what)


class Lists:
    """The same answers from a recognizer that only takes lists, on the caller's thread."""

    info = ModelInfo("lists", "cpu", "float32")
    batch_size = 3

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        return [_text(chunk) for chunk in chunks]


def _text(chunk: np.ndarray) -> ChunkText:
    return ChunkText(f"n{round(float(np.abs(chunk).max()) * 1000)}-{len(chunk)}", "en", False)


def _blocks(model: object, count: int = 8) -> Iterator[np.ndarray]:
    """`count` 5-second chunks' worth of audio, one chunk a block, each marked by its value."""
    for index in range(count):
        if isinstance(model, Servers):
            model.note(f"decoded {index}")
        block = np.full(5 * RATE, 0.05 + index / 1000, np.float32)
        block[::7] *= -1  # not silent
        yield block


def _run(model: object, count: int = 8, **options: object) -> list[tuple[float, float, str]]:
    transcript = transcribe_stream(
        _blocks(model, count),
        SourceInfo("a.wav", "0" * 64, 1),
        model,  # type: ignore[arg-type]
        chunk_seconds=5,
        language=None,
        **options,  # type: ignore[arg-type]
    )
    return [(s.start, s.end, s.text) for s in transcript.segments]


def test_decoding_goes_on_while_chunks_are_out_and_the_window_is_kept() -> None:
    servers = Servers(window=3)
    assert _run(servers) == _run(Lists())
    assert servers.log.index("decoded 2") < servers.log.index("answered #0")
    assert servers.most_out == 3


def test_the_next_chunk_goes_out_as_soon_as_one_returns_not_when_all_have() -> None:
    """Found on main: a recording sent a batch and waited for its slowest chunk."""
    slow_first = Servers(window=2, delay=lambda number: 1.0 if number == 0 else 0.05)
    _run(slow_first, count=6)
    log = slow_first.log
    assert log.index("sent #2") < log.index("answered #0")  # #1 returned: #2 went out
    assert log.index("sent #3") < log.index("answered #0")


def test_answers_out_of_order_make_the_same_transcript_in_order() -> None:
    backwards = Servers(window=8, delay=lambda number: 0.05 * (8 - number))
    assert _run(backwards) == _run(Lists())
    assert backwards.log.index("answered #7") < backwards.log.index("answered #0")


class ChangingWindow(Servers):
    """The vLLM engine's window changes as other recordings start and end: here, on every
    read."""

    def __init__(self) -> None:
        super().__init__(delay=lambda number: 0.02 * (number % 3))
        self._sizes = iter([3, 1, 4, 2, 5, 1, 3] * 10)

    @property
    def window(self) -> int:
        return next(self._sizes)


def test_a_window_that_changes_sends_every_chunk_once() -> None:
    changing = ChangingWindow()
    assert _run(changing, count=12) == _run(Lists(), count=12)
    assert changing.samples_sent == 12 * 5 * RATE  # every sample once


def test_a_truncated_answer_is_sent_again_in_halves_meanwhile() -> None:
    class Truncating(Servers):
        def submit(self, chunk, language=None, context=None):
            if len(chunk) < 20 * RATE:
                return super().submit(chunk, language, context)
            answer: Future[ChunkText] = Future()
            answer.set_result(ChunkText("cut off", "en", truncated=True))
            self.note(f"sent whole {len(chunk)}")
            return answer

    model = Truncating(window=4)
    audio = np.full(30 * RATE, 0.05, np.float32)
    audio[::7] *= -1  # not silent
    halves = plan_chunks(audio, RATE, 15 + 1)
    transcript = transcribe_stream(
        iter([audio]),
        SourceInfo("a.wav", "0" * 64, 1),
        model,
        chunk_seconds=30,
        language=None,
    )
    assert [s.text for s in transcript.segments] == [_text(audio[a:b]).text for a, b in halves]
    assert not any(s.truncated for s in transcript.segments)
    assert transcript.segments[0].end == transcript.segments[1].start


def test_a_failed_chunk_fails_the_recording_and_the_rest_is_called_off() -> None:
    class Failing(Servers):
        def __init__(self) -> None:
            super().__init__(window=4, delay=lambda number: 0.3)
            self.answers: list[Future[ChunkText]] = []

        def submit(self, chunk, language=None, context=None):
            if len(self.answers) == 1:
                answer: Future[ChunkText] = Future()
                answer.set_exception(RuntimeError("every server rejected it"))
                return answer
            self.answers.append(super().submit(chunk, language, context))
            return self.answers[-1]

    failing = Failing()
    with pytest.raises(RuntimeError, match="every server rejected it"):
        _run(failing)
    assert failing.answers[0].cancelled()  # still out when #1 failed: not waited for


def test_a_stop_while_chunks_are_out_ends_the_wait() -> None:
    forever = Servers(window=2, delay=lambda number: 60.0)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ShutdownRequested):
        _run(forever, should_stop=stop.is_set)
    assert time.monotonic() - started < 5


def test_progress_says_where_the_next_answer_reaches_and_answers_never_fall_short_of_it() -> None:
    """`status` moves its estimate toward `next_at_least` between answers (issue 20's CI: an
    estimate from the pace alone overshot the next answer, and progress moved back)."""
    heard: list[StreamProgress] = []
    jumbled = Servers(window=3, delay=lambda number: 0.05 * ((number * 7) % 4 + 1))
    _run(jumbled, count=10, on_progress=heard.append)
    first, last = heard[0], heard[-1]
    assert first.done == 0 and 4 < (first.next_at_least or 0) <= 5, "the first chunk sent"
    assert last == StreamProgress(50.0, None), "all answered, none with the model"
    for before, after in itertools.pairwise(heard):
        assert after.done >= before.done
        if before.next_at_least is not None and after.done > before.done:
            assert after.done >= before.next_at_least, (before, after)
