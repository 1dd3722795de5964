"""The server pool against servers that answer badly, the way a proxy, a wrong model, a
half-broken host or an overloaded box answers (issue 24): each misbehaviour is that server's
failure, its chunks go to another server, it is marked down with the reason, and nothing a
server sends back reveals the API key."""

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog

from support.engine_servers import (
    Endless,
    OddServer,
    answers,
    dripping,
    echoing_headers,
    good_answer,
    remote_engine,
    response,
)
from transcribed.errors import ShutdownRequested, TransientError
from transcribed.servers import engine_status
from transcribed.servers.server_pool import (
    DOWN_AFTER,
    EngineUnavailable,
    PoolSettings,
    RequestRejected,
    ServerPool,
)
from transcribed.servers.vllm_engine import RemoteEngine

KEY = "sk-test-6f1e9a2b7c"
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"


@pytest.fixture
def pair() -> Iterator[tuple[OddServer, OddServer]]:
    servers = OddServer().start(), OddServer().start()
    yield servers
    for server in servers:
        server.stop()


def _chunks(count: int, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)] * count


def _wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _engine(urls: list[str], **settings: object) -> RemoteEngine:
    return remote_engine(urls, vllm_max_in_flight=1, **settings)  # type: ignore[arg-type]


BAD_ANSWERS = {
    "an HTML page with 200": (response(HTML, headers={"Content-Type": "text/html"}), "not JSON"),
    "{}": (response(b"{}"), "no choices"),
    "no choices": (response(b'{"choices": []}'), "no choices"),
    "a string": (response(b'"hello"'), "not a JSON object"),
    "a number for the message": (response(b'{"choices": [{"message": 5}]}'), "no message"),
    "a number for the content": (
        response(b'{"choices": [{"message": {"content": 7}}]}'),
        "content is not text",
    ),
    "choices a string": (response(b'{"choices": "x"}'), "no choices"),
    "bad logprobs": (
        response(
            b'{"choices": [{"message": {"content": "language English<asr_text>x"},'
            b' "logprobs": {"content": [{"token": 1}]}}]}'
        ),
        "logprobs",
    ),
    "bad gzip": (
        response(good_answer()[:10], headers={"Content-Encoding": "gzip"}),
        "content-encoding",
    ),
    "truncated gzip": (
        response(gzip.compress(good_answer())[:20], headers={"Content-Encoding": "gzip"}),
        "not JSON",  # what httpx's decoder makes of it: nothing
    ),
    "a proxy's 413": (
        response(HTML.replace(b"502 Bad Gateway", b"413 Request Entity Too Large"), "413 X"),
        "HTTP 413",
    ),
    "a proxy's 408": (response(HTML, "408 Request Timeout"), "HTTP 408"),
    "a proxy's 302": (
        response(b"", "302 Found", headers={"Location": "https://elsewhere/"}),
        "HTTP 302",
    ),
    "a chat model's answer": (
        response(good_answer("I am a chat assistant, how can I help?")),
        "not a transcription",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ANSWERS))
def test_a_bad_answer_goes_to_another_server_and_the_bad_one_is_marked_down(
    pair: tuple[OddServer, OddServer], kind: str
) -> None:
    """A malformed 200, a proxy's error page or a chat model's prose from one server: every
    chunk is transcribed by the other, and the bad server is down with the reason."""
    bad, good = pair
    raw, reason = BAD_ANSWERS[kind]
    engine = _engine([bad.url, good.url])
    bad.chat = answers(raw)  # up, and now it goes bad
    try:
        for _ in range(10):  # until the bad one has failed DOWN_AFTER chunks in a row
            texts = engine.transcribe(_chunks(8))
            assert [text.text for text in texts] == ["hello"] * 8
            if not engine.pool.servers[0].up:
                break
        assert bad.chats >= 1 + DOWN_AFTER  # its probe at start, then chunks that failed
        assert not engine.pool.servers[0].up, engine.pool.snapshot()
        assert reason in str(engine.pool.servers[0].problem)
        assert engine.summary() == "1 of 2 engine servers up"
    finally:
        engine.pool.close()


def test_a_chunk_fails_for_good_only_when_every_server_rejected_it(
    pair: tuple[OddServer, OddServer],
) -> None:
    """A 4xx from one server goes to the other; from both, the request is rejected."""
    first, second = pair
    rejection = answers(response(b'{"error": {"message": "audio too long"}}', "400 Bad Request"))
    engine = _engine([first.url, second.url])
    try:
        first.chat = rejection
        assert engine.transcribe(_chunks(1))[0].text == "hello"
        second.chat = rejection
        with pytest.raises(RequestRejected, match="every engine server rejected it"):
            engine.transcribe(_chunks(1))
    finally:
        engine.pool.close()


def test_servers_that_all_answer_badly_make_the_job_wait_not_fail() -> None:
    """Garbage from every server is the servers' fault: transient, the recording waits."""
    server = OddServer().start()
    engine = _engine([server.url], vllm_connect_seconds=0.5)
    server.chat = answers(response(b"{}"))
    try:
        with pytest.raises(EngineUnavailable, match="no choices") as failed:
            engine.transcribe(_chunks(1))
        assert isinstance(failed.value, TransientError)
        assert _wait_for(lambda: engine.summary() == "0 of 1 engine servers up", 5)
    finally:
        engine.pool.close()
        server.stop()


def test_an_answer_dripping_in_is_given_up_at_the_deadline(
    pair: tuple[OddServer, OddServer],
) -> None:
    """A byte every 0.1 s keeps every read alive: only a total deadline ends it."""
    slow, good = pair
    slow.chat = dripping(response(good_answer()), 0.1)  # ~37 s for the whole answer
    engine = _engine([slow.url, good.url], vllm_timeout_seconds=1.0)
    try:
        started = time.monotonic()
        [text] = engine.transcribe(_chunks(1))
        assert text.text == "hello" and time.monotonic() - started < 5
    finally:
        engine.pool.close()


def test_a_huge_answer_is_abandoned_past_the_size_no_real_answer_reaches(
    pair: tuple[OddServer, OddServer],
) -> None:
    """A 1.5 GB answer (claimed, or streamed without a length) is not read whole."""
    huge, good = pair
    for endless in (Endless(), Endless(claimed=0)):  # with a Content-Length, and a lying one
        huge.chat = endless
        engine = _engine([huge.url, good.url])
        try:
            [text] = engine.transcribe(_chunks(1))
            assert text.text == "hello"
            assert endless.sent < 32 << 20  # the cap, and what the sockets buffer
        finally:
            engine.pool.close()


@pytest.mark.parametrize("status", ["400 Bad Request", "500 Internal Server Error"])
def test_an_echoed_key_is_never_logged_raised_or_shown(tmp_path: Path, status: str) -> None:
    """A proxy quoting our Authorization header: the key is in none of what we keep."""
    server = OddServer().start()
    (tmp_path / "key").write_text(KEY)
    engine = _engine([server.url], vllm_api_key_file=tmp_path / "key", vllm_connect_seconds=0.5)
    server.chat = echoing_headers(status)
    try:
        with structlog.testing.capture_logs() as logged, pytest.raises(Exception) as failed:
            engine.transcribe(_chunks(1))
        assert server.requests[-1].headers["Authorization"] == f"Bearer {KEY}"  # it was echoed
        engine_status.write(tmp_path, engine.pool.snapshot())
        kept = [str(failed.value), str(logged), (tmp_path / engine_status.FILE_NAME).read_text()]
        assert "bad request (headers:" in str(failed.value) + str(logged)
        assert not [text for text in kept if KEY in text or "Bearer sk" in text]
    finally:
        engine.pool.close()
        server.stop()


def test_a_bad_model_listing_neither_ends_the_watcher_nor_keeps_a_server_down(
    pair: tuple[OddServer, OddServer],
) -> None:
    """Found on main: a 200 listing that is not JSON killed the watcher, silently; a server
    down for a moment then never came back."""
    flaky, good = pair
    engine = _engine([flaky.url, good.url])
    try:
        listing = flaky.listing
        flaky.listing = answers(response(b"<html>maintenance</html>"))
        flaky.chat = answers(response(b"", "503 Service Unavailable"))
        engine.transcribe(_chunks(4))
        assert _wait_for(lambda: engine.summary() == "1 of 2 engine servers up", 5)
        # Down first for its failed requests (HTTP 503), then its at-once check names the
        # listing: under load that check may come a moment later.
        problem = lambda: str(engine.pool.servers[0].problem)  # noqa: E731
        assert _wait_for(lambda: "model listing is not JSON" in problem(), 5), problem()
        flaky.listing = answers(response(good_answer()[:5], headers={"Content-Encoding": "br"}))
        time.sleep(1.5)  # probed meanwhile: a bad encoding is its problem too
        flaky.listing, flaky.chat = listing, answers(response(good_answer()))
        assert _wait_for(lambda: engine.summary() == "2 of 2 engine servers up", 10)
    finally:
        engine.pool.close()


def test_the_watcher_logs_its_own_failure_and_carries_on(
    pair: tuple[OddServer, OddServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky, good = pair
    engine = _engine([flaky.url, good.url])
    original = ServerPool._check
    broken = {"times": 1}

    async def check_once_broken(pool: ServerPool, server: object) -> None:
        if broken["times"]:
            broken["times"] -= 1
            raise RuntimeError("a bug in the watcher")
        await original(pool, server)  # type: ignore[arg-type]

    try:
        with structlog.testing.capture_logs() as logged:
            monkeypatch.setattr(ServerPool, "_check", check_once_broken)
            engine.pool.servers[0].next_check = 0.0  # due now
            assert _wait_for(lambda: broken["times"] == 0, 5)
            flaky.stop()  # the watcher must still be there to notice
            assert _wait_for(lambda: engine.summary() == "1 of 2 engine servers up", 30)
        assert [e for e in logged if e["event"] == "engine.watcher_failed"]
    finally:
        engine.pool.close()


def test_a_status_file_that_cannot_be_written_is_not_the_pools_end() -> None:
    """`on_change` writes the status file: a full disk there is logged, and work goes on."""
    server = OddServer().start()

    def full_disk(servers: object) -> None:
        raise OSError(28, "No space left on device")

    pool = ServerPool(PoolSettings(servers=(server.url,), model="tiny"), on_change=full_disk)
    try:
        with structlog.testing.capture_logs() as logged:
            pool.start()
        assert pool.summary() == "1 of 1 engine servers up"
        assert [e for e in logged if e["event"] == "engine.status_not_written"]
    finally:
        pool.close()
        server.stop()


def test_a_start_that_fails_closes_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found on main: the pool's loop thread outlived a failed start and kept the process
    from ever exiting."""

    async def broken(pool: ServerPool, server: object) -> None:
        raise RuntimeError("a bug at start")

    monkeypatch.setattr(ServerPool, "_check", broken)
    pool = ServerPool(PoolSettings(servers=("http://127.0.0.1:9",), model="tiny"))
    with pytest.raises(RuntimeError, match="a bug at start"):
        pool.start()
    assert not pool._thread.is_alive() and pool._thread.daemon


def test_the_down_reason_is_in_the_summary_status_and_the_page_show() -> None:
    servers = [
        {"url": "https://a:8000", "up": True, "problem": None},
        {"url": "https://b:8000", "up": False, "problem": "its answer is not JSON (it begins '<')"},
    ]
    assert engine_status.summary(servers) == (
        "1 of 2 engine servers up (https://b:8000: its answer is not JSON (it begins '<'))"
    )


def test_a_chat_model_behind_the_name_stays_down_while_the_other_works(
    pair: tuple[OddServer, OddServer],
) -> None:
    """Its probes (a short real request) must be transcriptions too, so it does not come
    back up to fail three more chunks after each fall."""
    chat, good = pair
    chat.chat = answers(response(good_answer("Sure! What would you like to talk about?")))
    engine = _engine([chat.url, good.url])
    try:
        assert "not a transcription" in str(engine.pool.servers[0].problem)
        for _ in range(5):
            assert [t.text for t in engine.transcribe(_chunks(4))] == ["hello"] * 4
            time.sleep(0.5)  # probed meanwhile (after 1 s, then 2 s, …)
        assert engine.summary() == "1 of 2 engine servers up"
        assert chat.chats >= 2 and good.chats >= 20  # probed again, never given a chunk
    finally:
        engine.pool.close()


def test_a_request_after_the_pool_closed_is_a_shutdown_not_an_error() -> None:
    """A job cutting its next chunk while the daemon stops goes back to the queue."""
    server = OddServer().start()
    engine = _engine([server.url])
    engine.pool.close()
    try:
        with pytest.raises(ShutdownRequested):
            engine.transcribe(_chunks(1))
    finally:
        server.stop()
