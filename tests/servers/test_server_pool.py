"""The server pool under faults, against fake vLLM servers with the tiny real checkpoint:
latency, 5xx, connection resets, a hang past the timeout, a server killed mid-request, all
servers down and back, a rejected key, TLS with a pinned CA; and the balancing itself."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support.engine_servers import make_certificates, remote_engine
from support.vllm_server import FakeVllm, TinyModel
from transcribed.errors import TransientError
from transcribed.servers.pool_sim import ApiServer, timed_answer
from transcribed.servers.server_pool import DOWN_AFTER

HERE = Path(__file__).parents[1] / "support"  # where the helpers are


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> TinyModel:
    return TinyModel(tiny_model)


@pytest.fixture
def pair(model: TinyModel) -> Iterator[tuple[FakeVllm, FakeVllm]]:
    servers = FakeVllm(model, "tiny").start(), FakeVllm(model, "tiny").start()
    yield servers
    for server in servers:
        server.stop()


def _chunks(count: int, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)] * count


def test_5xx_resets_and_latency_are_retried_on_the_other_server(
    pair: tuple[FakeVllm, FakeVllm],
) -> None:
    flaky, good = pair
    engine = remote_engine([flaky.url, good.url], vllm_max_in_flight=2)
    # One of each: DOWN_AFTER failures in a row would mark it down (another test), and the
    # faults left unmet (seen in CI: 503, reset, reset, then down).
    flaky.faults.errors, flaky.faults.resets, good.faults.latency = 1, 1, 0.2
    try:
        texts = engine.transcribe(_chunks(8))
    finally:
        engine.pool.close()
    assert len(texts) == 8 and all(text.text for text in texts)
    assert flaky.faults.errors == flaky.faults.resets == 0  # the faults were met, and survived


def test_a_request_hanging_past_the_timeout_goes_to_the_other_server(
    pair: tuple[FakeVllm, FakeVllm],
) -> None:
    hung, good = pair
    engine = remote_engine([hung.url, good.url], vllm_timeout_seconds=1.0)
    hung.faults.hangs = 1
    try:
        started = time.monotonic()
        [text] = engine.transcribe(_chunks(1))
        assert text.text and time.monotonic() - started < 5
    finally:
        engine.pool.close()


def test_a_server_failing_every_request_is_marked_down_and_the_other_does_the_work(
    pair: tuple[FakeVllm, FakeVllm],
) -> None:
    broken, good = pair
    engine = remote_engine([broken.url, good.url], vllm_max_in_flight=1)
    broken.faults.errors = 1000  # its model listing still answers: only real work proves it
    try:
        assert len(engine.transcribe(_chunks(6))) == 6
        assert engine.summary() == "1 of 2 engine servers up"
        assert broken.server.received >= DOWN_AFTER - 1 and good.server.answered >= 6
    finally:
        engine.pool.close()


def test_all_servers_down_is_transient_and_work_resumes_when_one_is_back(
    model: TinyModel,
) -> None:
    server = FakeVllm(model, "tiny").start()
    host, port = server.server.server_address[:2]
    engine = remote_engine([server.url, "http://127.0.0.1:9"], vllm_connect_seconds=1.0)
    try:
        assert engine.summary() == "1 of 2 engine servers up"  # port 9: nobody listens
        server.stop()
        with pytest.raises(TransientError, match="0 of 2 engine servers up"):
            for _ in range(DOWN_AFTER + 1):  # the stopped server's open connections end
                engine.transcribe(_chunks(1))
        back = FakeVllm(model, "tiny", str(host), port).start()
        deadline = time.monotonic() + 10
        while engine.summary() != "1 of 2 engine servers up" and time.monotonic() < deadline:
            time.sleep(0.1)  # the pool probes the down servers
        assert len(engine.transcribe(_chunks(2))) == 2
        back.stop()
    finally:
        engine.pool.close()


def test_a_server_killed_mid_request_loses_nothing(
    model: TinyModel, tiny_model: Path, tmp_path: Path
) -> None:
    """A real process with requests in flight, killed: they are answered by the other."""
    survivor = FakeVllm(model, "tiny").start()
    script = [sys.executable, str(HERE / "vllm_server.py"), "--model", str(tiny_model)]
    options = ["--name", "tiny", "--port", "0", "--latency", "3"]
    with subprocess.Popen([*script, *options], stdout=subprocess.PIPE, text=True) as doomed:
        try:
            assert doomed.stdout is not None
            url = json.loads(doomed.stdout.readline())["url"]
            engine = remote_engine([url, survivor.url], vllm_max_in_flight=2)
            results: list[object] = []
            job = threading.Thread(target=lambda: results.extend(engine.transcribe(_chunks(6))))
            job.start()
            time.sleep(1.5)  # two requests are now sleeping inside the doomed server
            os.kill(doomed.pid, signal.SIGKILL)
            job.join(30)
            assert len(results) == 6
            assert engine.summary() == "1 of 2 engine servers up"
        finally:
            engine.pool.close()
            doomed.kill()
            survivor.stop()


def test_a_rejected_key_marks_the_server_down_and_the_right_key_is_sent(
    model: TinyModel, tmp_path: Path
) -> None:
    server = FakeVllm(model, "tiny", api_key="s3cret-key").start()
    (tmp_path / "good.key").write_text("s3cret-key\n")
    (tmp_path / "bad.key").write_text("wrong")
    try:
        wrong = remote_engine([server.url], vllm_api_key_file=tmp_path / "bad.key")
        assert wrong.summary() == "0 of 1 engine servers up"
        assert "API key was not accepted" in str(wrong.pool.servers[0].problem)
        wrong.pool.close()
        right = remote_engine([server.url], vllm_api_key_file=tmp_path / "good.key")
        assert len(right.transcribe(_chunks(1))) == 1
        right.pool.close()
    finally:
        server.stop()


def test_tls_is_verified_against_the_pinned_ca(model: TinyModel, tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "tls")
    tls = (certificates / "server.pem", certificates / "server.key")
    server = FakeVllm(model, "tiny", tls=tls).start()
    try:
        assert server.url.startswith("https://")
        unpinned = remote_engine([server.url])  # the system's CAs do not know ours
        assert unpinned.summary() == "0 of 1 engine servers up"
        assert "CERTIFICATE_VERIFY_FAILED" in str(unpinned.pool.servers[0].problem)
        unpinned.pool.close()
        pinned = remote_engine([server.url], vllm_ca_file=certificates / "ca.pem")
        assert len(pinned.transcribe(_chunks(1))) == 1
        pinned.pool.close()
    finally:
        server.stop()


def test_requests_go_to_the_least_busy_server_never_past_the_cap() -> None:
    servers = [ApiServer(("127.0.0.1", 0), "sim", timed_answer("sim", 20.0)) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = remote_engine([server.url for server in servers], model="sim", vllm_max_in_flight=3)
    try:
        probes = [server.answered for server in servers]  # each was asked once before use
        assert len(engine.transcribe(_chunks(12, seconds=4))) == 12  # 0.2 s each
        assert [server.most_in_flight for server in servers] == [3, 3]
        assert [s.answered - before for s, before in zip(servers, probes, strict=True)] == [6, 6]
    finally:
        engine.pool.close()
        for server in servers:
            server.shutdown()
            server.server_close()
