"""`doctor` with the vLLM engine: each server reachable, its certificate valid, the key
accepted, the model served, the version said; the network open to the servers only."""

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Folders
from support.engine_servers import OddServer, answers, make_certificates, response
from support.vllm_server import FakeVllm, TinyModel
from transcribed.commands.doctor import Finding, diagnose
from transcribed.host import isolation
from transcribed.settings import Settings


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three TLS servers with one key: one right, one serving another model, one stopped."""
    folder = make_certificates(tmp_path_factory.mktemp("tls"))
    (folder / "api.key").write_text("k3y\n")
    (folder / "api.key").chmod(0o600)
    model = TinyModel(tiny_model)
    tls = (folder / "server.pem", folder / "server.key")
    good = FakeVllm(model, "Qwen/Qwen3-ASR-1.7B-hf", api_key="k3y", tls=tls).start()
    other = FakeVllm(model, "some-llm", api_key="k3y", tls=tls).start()
    gone = FakeVllm(model, "Qwen/Qwen3-ASR-1.7B-hf", tls=tls).start()
    gone.stop()
    (folder / "urls").write_text("\n".join(s.url for s in (good, other, gone)))
    yield folder
    good.stop()
    other.stop()


def _engine_findings(folders: Folders, servers: Path, **settings: object) -> list[Finding]:
    values = {
        "inbox": folders.inbox,
        "outbox": folders.outbox,
        "archive_dir": folders.archive,
        "failed_dir": folders.failed,
        "state_dir": folders.state,
        "engine": "vllm",
        "vllm_servers": (servers / "urls").read_text().split(),
        "vllm_api_key_file": servers / "api.key",
        "vllm_ca_file": servers / "ca.pem",
    }
    config = Settings.model_validate(values | settings)
    return [f for f in diagnose(config) if f.check in ("engine", "network", "model", "gpu")]


def test_each_server_is_checked_and_said_what_is_wrong(
    folders: Folders, servers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolation, "probe", lambda address: errno.EPERM)  # as under the drop-in
    findings = _engine_findings(folders, servers)
    by_level = [(f.level, f.message) for f in findings if f.check == "engine"]
    good, other, gone = by_level
    assert good[0] == "ok" and "serves Qwen/Qwen3-ASR-1.7B-hf with vLLM sim" in good[1]
    assert other[0] == "fail" and "serves some-llm" in other[1]
    assert gone[0] == "fail" and "cannot be reached" in gone[1]
    assert ("network", "ok") in [(f.check, f.level) for f in findings]
    assert not [f for f in findings if f.check == "model"]  # the servers hold the model
    assert "k3y" not in str(findings)


def test_a_wrong_key_an_unpinned_ca_and_an_open_network_fail(
    folders: Folders, servers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(isolation, "probe", lambda address: None)  # a connection went out
    (tmp_path / "wrong.key").write_text("nope")
    findings = _engine_findings(
        folders, servers, vllm_api_key_file=tmp_path / "wrong.key", require_offline=True
    )
    engine = [f for f in findings if f.check == "engine"]
    assert any("readable by other users" in f.message for f in engine)
    assert engine[1].level == "fail" and "rejected the API key" in engine[1].message
    assert [(f.check, f.level) for f in findings if f.check == "network"] == [("network", "fail")]
    unpinned = _engine_findings(folders, servers, vllm_ca_file=None)
    assert "TLS certificate is not valid" in str([f.message for f in unpinned])


@pytest.mark.parametrize(
    "listing",
    [
        response(b"<html>It works!</html>", headers={"Content-Type": "text/html"}),
        response(b"garbage", headers={"Content-Encoding": "gzip"}),
    ],
)
def test_a_server_answering_something_else_is_a_finding_not_a_traceback(
    folders: Folders, listing: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found on main: a 200 that is not JSON (or not decodable) crashed `doctor`."""
    monkeypatch.setattr(isolation, "probe", lambda address: errno.EPERM)
    odd = OddServer().start()
    odd.listing = answers(listing)
    (folders.state / "urls").write_text(odd.url)
    (folders.state / "api.key").write_text("k3y\n")
    (folders.state / "api.key").chmod(0o600)
    try:
        findings = _engine_findings(folders, folders.state, vllm_ca_file=None)
    finally:
        odd.stop()
    [server] = [f for f in findings if f.check == "engine" and odd.url in f.message]
    assert server.level == "fail"
