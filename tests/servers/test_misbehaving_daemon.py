"""The real daemon (`transcribed run`) with engine servers that misbehave (issue 24): a model
listing that is not JSON at start, and a proxy that quotes the API key back in its errors.
What the user meets: the daemon starts, says why the server is down, stops on SIGTERM, and
the key appears nowhere it keeps or shows."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import Folders
from support.engine_servers import (
    Behaviour,
    OddServer,
    Request,
    answers,
    echoing_headers,
    good_answer,
    response,
)
from support.recordings import write_soundfile
from support.running import Daemon, cli, events
from transcribed.settings import Settings
from transcribed.web.app import build_app
from transcribed.web.auth import Credentials

pytestmark = pytest.mark.slow

KEY = "sk-daemon-3b8e71c0d2"


@pytest.fixture
def server() -> Iterator[OddServer]:
    made = OddServer("Qwen3-ASR-stand-in").start()
    yield made
    made.stop()


def _env(folders: Folders, tiny_model: Path, server: OddServer, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "api.key").write_text(KEY + "\n")
    return folders.env(
        tiny_model,
        TRANSCRIBED_ENGINE="vllm",
        TRANSCRIBED_MODEL="Qwen3-ASR-stand-in",
        TRANSCRIBED_VLLM_SERVERS=json.dumps([server.url]),
        TRANSCRIBED_VLLM_API_KEY_FILE=str(tmp_path / "api.key"),
        TRANSCRIBED_VLLM_CONNECT_SECONDS="1",
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_MAX_ATTEMPTS="1",
    )


def _page(folders: Folders) -> str:
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
    )
    app = build_app(settings, Credentials(None, None))
    local = {"client": ("127.0.0.1", 1), "base_url": "http://127.0.0.1:8750"}
    with TestClient(app, **local) as page:  # type: ignore[arg-type]
        return page.get("/").text


def test_a_listing_that_is_not_json_at_start_and_sigterm_still_ends_the_daemon(
    folders: Folders, tiny_model: Path, server: OddServer, tmp_path: Path
) -> None:
    """Found on main: a traceback from the pool's start, then a process SIGTERM could not
    end (the pool's loop thread lived on)."""
    server.listing = answers(response(b"<html><body>Welcome to nginx!</body></html>"))
    log = tmp_path / "daemon.log"
    env = _env(folders, tiny_model, server, tmp_path)
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready(90)
        status = cli("status", env=env).stdout
        assert "0 of 1 engine servers up" in status and "model listing is not JSON" in status
        assert "model listing is not JSON" in _page(folders)
        assert daemon.stop(30) == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    assert "Traceback" not in log.read_text()


def test_a_key_echoed_by_a_proxy_reaches_no_log_database_reason_file_status_or_page(
    folders: Folders, tiny_model: Path, server: OddServer, tmp_path: Path
) -> None:
    """Found on main: the key went into the log, the job database, failed/….error.json,
    `status` and the page."""
    server.chat = after_the_probe(echoing_headers("400 Bad Request"))  # "the request": fails
    log = tmp_path / "daemon.log"
    env = _env(folders, tiny_model, server, tmp_path)
    write_soundfile(tmp_path / "memo.wav", 4, 16000, "PCM_16")
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready(90)
        (tmp_path / "memo.wav").rename(folders.inbox / "memo.wav")
        daemon.wait_for(lambda: any(folders.failed.glob("*.error.json")), 120)
        assert any("Authorization" in str(r.headers) for r in server.requests)  # it was echoed
        reason = next(folders.failed.glob("*.error.json")).read_text()
        assert "bad request (headers:" in reason
        shown = [
            reason,
            cli("status", env=env).stdout,
            cli("status", "--json", env=env).stdout,
            cli("jobs", "list", "--json", env=env).stdout,
            _page(folders),
        ]
        assert daemon.stop(30) == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    kept = [*shown, log.read_text(), *(p.read_bytes().decode("latin-1") for p in _state(folders))]
    assert not [text for text in kept if KEY in text]
    assert [e for e in events(log) if e["event"] == "job.failed"]


def after_the_probe(behaviour: Behaviour) -> Behaviour:
    """A good answer to the pool's probe at start (a short request), `behaviour` after."""
    probed = answers(response(good_answer()))

    def behave(request: Request, connection: socket.socket) -> None:
        short = json.loads(request.body).get("max_tokens", 0) <= 8
        (probed if short else behaviour)(request, connection)

    return behave


def _state(folders: Folders) -> list[Path]:
    """Every file in the state folder: the job database and its journal included."""
    return [path for path in folders.state.rglob("*") if path.is_file()]
