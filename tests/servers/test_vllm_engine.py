"""The vLLM engine against a fake server with the tiny real checkpoint behind it: it asks
what the resident model is asked and reads the answer the same way."""

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support.engine_servers import remote_engine
from support.vllm_server import FakeVllm, TinyModel
from transcribed.loops.supervisor import Supervisor
from transcribed.model.engine import Engine
from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.settings import ModelSettings


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> TinyModel:
    return TinyModel(tiny_model)


@pytest.fixture(scope="module")
def remote(model: TinyModel) -> Iterator[tuple[RemoteEngine, FakeVllm]]:
    server = FakeVllm(model, "tiny").start()
    engine = remote_engine([server.url])
    yield engine, server
    engine.pool.close()
    server.stop()


def _pcm16_noise(seconds: float, seed: int) -> np.ndarray:
    """Noise on 16-bit steps: it crosses the wire (16-bit WAV) unchanged."""
    steps = np.random.default_rng(seed).integers(-3000, 3000, int(seconds * 16000))
    return (steps / 32768).astype(np.float32)


@pytest.mark.parametrize(
    ("language", "context"), [(None, None), ("en", "a glossary: Kubernetes"), (None, "budget")]
)
def test_remote_and_resident_models_give_the_same_chunk_texts(
    remote: tuple[RemoteEngine, FakeVllm],
    model: TinyModel,
    tiny_model: Path,
    language: str | None,
    context: str | None,
) -> None:
    """Same weights behind both: the same prompt, tokens and parse, so the same results."""
    engine, _server = remote
    local = Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=1)
    chunks = [_pcm16_noise(seconds, seed) for seed, seconds in enumerate([1.5, 0.7])]
    got = engine.transcribe(chunks, language=language, context=context)
    assert got == [local.transcribe([chunk], language, context)[0] for chunk in chunks]
    for chunk in chunks:  # sent at once: the server may see them in either order
        expected = local._processor.apply_transcription_request(
            chunk, language=language, prompt=context
        )["input_ids"][0]
        assert local._processor.tokenizer.decode(expected) in model.prompts[-len(chunks) :]


def test_confidence_language_and_truncation_come_from_the_answer(
    remote: tuple[RemoteEngine, FakeVllm],
) -> None:
    engine, _server = remote
    steps = [("language", math.log(0.9)), (" English", math.log(0.8)), ("<asr_text>", 0.0)]
    answer = {
        "choices": [
            {
                "message": {"content": "language English<asr_text>hello"},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": t, "logprob": p} for t, p in steps]},
            }
        ]
    }
    chunk = engine.parse(answer, None, None)
    assert (chunk.text, chunk.language, chunk.language_confidence) == ("hello", "en", 0.72)
    assert not chunk.truncated
    answer["choices"][0]["finish_reason"] = "length"
    assert engine.parse(answer, None, None).truncated
    assert engine.parse(answer, "de", None).language_confidence is None  # forced


def test_requests_carry_audio_and_settings_but_no_names(
    remote: tuple[RemoteEngine, FakeVllm],
) -> None:
    engine, _server = remote
    body = engine.request(_pcm16_noise(2, 0), "zh", None)
    assert body["messages"][-1] == {"role": "assistant", "content": "language Chinese<asr_text>"}
    assert body["continue_final_message"] and not body["add_generation_prompt"]
    assert body["temperature"] == 0 and body["logprobs"] and body["max_tokens"] == 40
    assert engine.info.device == "vllm" and engine.info.id == "tiny"


def test_a_pool_whose_thread_died_is_a_health_problem() -> None:
    """Issue 22: the pool's thread was in no health check; now the model thread watches it,
    ends with it, and the supervisor reports the model thread dead."""
    stop = threading.Event()
    engine = RemoteEngine.connect(
        ModelSettings(engine="vllm", vllm_servers=["http://127.0.0.1:9"], model="tiny"), 8, stop
    )
    supervisor = Supervisor(stop)
    supervisor.add_thread("model", engine.serve, engine.busy_for)
    supervisor.start()
    try:
        assert supervisor.problem() is None
        engine.pool._loop.call_soon_threadsafe(engine.pool._loop.stop)  # its loop ends
        deadline = time.monotonic() + 10
        while supervisor.problem() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.problem() == "the model thread has died"
    finally:
        stop.set()
        supervisor.join(10)
        engine.pool.close()
    # Its session closed too, not left to the garbage collector (an unclosed-session warning
    # that surfaced in whichever test ran next).
    assert engine.pool._client is not None and engine.pool._client.closed
