"""With an engine of many servers, a recording's next batch is decoded while its last one is
with the servers; results stay in order and the same as one batch at a time."""

import threading
import time
from collections.abc import Iterator

import numpy as np

from transcribed.model.pipeline import transcribe_stream
from transcribed.output.transcript import ChunkText, ModelInfo, SourceInfo

RATE = 16000


class SlowServers:
    """A narrow fake `Recognizer`: each call takes 0.3 s; notes what happened when."""

    info = ModelInfo("servers", "vllm", "auto")
    batch_size = 2

    def __init__(self, concurrent: bool) -> None:
        self.concurrent = concurrent
        self.log: list[str] = []
        self._lock = threading.Lock()

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        self._note(f"call {len(chunks)}")
        time.sleep(0.3)
        self._note("answered")
        return [ChunkText(f"n{round(float(c[0]) * 1000)}", "en", False) for c in chunks]

    def _note(self, what: str) -> None:
        with self._lock:
            self.log.append(what)


def _blocks(model: SlowServers) -> Iterator[np.ndarray]:
    """Eight 5-second chunks' worth of audio, one chunk a block, each marked by its value."""
    for index in range(8):
        model._note(f"decoded {index}")
        block = np.full(5 * RATE, 0.05 + index / 1000, np.float32)
        block[::7] *= -1  # not silent
        yield block


def _run(model: SlowServers) -> list[tuple[float, float, str]]:
    transcript = transcribe_stream(
        _blocks(model), SourceInfo("a.wav", "0" * 64, 1), model, chunk_seconds=5, language=None
    )
    return [(s.start, s.end, s.text) for s in transcript.segments]


def test_decoding_goes_on_while_a_batch_is_with_the_servers() -> None:
    overlapped, serial = SlowServers(concurrent=True), SlowServers(concurrent=False)
    assert _run(overlapped) == _run(serial)
    first_answer = overlapped.log.index("answered")
    assert overlapped.log.index("decoded 3") < first_answer  # the next batch, meanwhile
    assert serial.log.index("decoded 3") > serial.log.index("answered")


class ChangingShare(SlowServers):
    """The vLLM engine's batch size changes as other recordings start and end: here, on
    every read."""

    def __init__(self) -> None:
        super().__init__(concurrent=True)
        self._sizes = iter([3, 1, 4, 2, 5, 1, 3] * 10)

    @property  # type: ignore[override]
    def batch_size(self) -> int:
        return next(self._sizes)


def test_a_batch_size_that_changes_mid_batch_sends_every_chunk_once() -> None:
    """Chunks arriving several at a time (the diarizer's steps do): none lost, none twice."""

    def run(model: SlowServers) -> list[tuple[float, float, str]]:
        blocks = []
        for index in range(4):
            block = np.full(15 * RATE, 0.05 + index / 1000, np.float32)
            block[::7] *= -1  # not silent
            blocks.append(block)
        transcript = transcribe_stream(
            iter(blocks), SourceInfo("a.wav", "0" * 64, 1), model, chunk_seconds=5, language=None
        )
        return [(s.start, s.end, s.text) for s in transcript.segments]

    steady = run(SlowServers(concurrent=False))
    assert len(steady) >= 12  # 60 s in chunks of at most 5 s
    assert run(ChangingShare()) == steady
