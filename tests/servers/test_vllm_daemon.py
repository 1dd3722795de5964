"""The real daemon with engine = "vllm" and two servers, each on its own host (a network
namespace of the test's own, joined to the daemon's by a veth pair; TLS with a pinned CA and
an API key, as in production). One server is killed mid-backlog; then the other too, and the
jobs wait, originals untouched, until a server is back."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from conftest import Folders
from support.engine_servers import make_certificates
from support.invariants import check_final, check_i1_i2, digest
from support.netns import TestHosts, netns_unavailable
from support.recordings import make_mixed_recordings, write_soundfile
from support.running import Daemon, Listener, cli, events, transcribe_once

pytestmark = pytest.mark.slow

HERE = Path(__file__).parents[1] / "support"  # where the helpers are
KEY = "test-api-key-4d9b"
SERVED = "Qwen3-ASR-tiny"

_why_not = netns_unavailable()


@pytest.fixture
def hosts() -> Iterator[TestHosts]:
    if _why_not:
        pytest.skip(f"two server hosts need network namespaces: {_why_not}")
    with TestHosts(servers=2) as made:
        yield made
    assert not made.leftovers(), "the test's namespaces are removed"


class Server:
    """One fake vLLM server (the tiny model behind it) in its own namespace."""

    def __init__(self, hosts: TestHosts, index: int, model: Path, tls: Path, latency: float):
        self.address = hosts.addresses[index]
        command = [sys.executable, str(HERE / "vllm_server.py"), "--model", str(model)]
        command += ["--name", SERVED, "--host", self.address, "--port", "8000"]
        command += ["--latency", str(latency), "--api-key-file", str(tls / "api.key")]
        command += ["--cert", str(tls / "server.pem"), "--key", str(tls / "server.key")]
        self.process = subprocess.Popen(
            [*hosts.inside(hosts.server_ns[index]), *command], stdout=subprocess.PIPE, text=True
        )
        self.url = f"https://{self.address}:8000"

    def wait_listening(self) -> "Server":
        assert self.process.stdout is not None
        assert json.loads(self.process.stdout.readline())["url"] == self.url
        return self

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _left_in_inbox(folders: Folders) -> list[Path]:
    return [path for path in folders.inbox.iterdir() if path.name != ".transcribed-work"]


def _archived(folders: Folders, names: Iterable[str]) -> bool:
    return not _left_in_inbox(folders) and all((folders.archive / name).exists() for name in names)


def _keys(data: Any) -> Any:
    """The keys of a transcript's JSON, nested (values left out)."""
    if isinstance(data, dict):
        return {key: _keys(value) for key, value in data.items()}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return [_keys(data[0])]
    return None


def test_two_servers_one_killed_then_none_then_one_back(
    hosts: TestHosts, folders: Folders, tiny_model: Path, tmp_path: Path
) -> None:
    tls = make_certificates(tmp_path / "tls", tuple(hosts.addresses))
    (tls / "api.key").write_text(KEY + "\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    backlog = make_mixed_recordings(staging, seconds=8)
    write_soundfile(staging / "long talk.wav", 24, 16000, "PCM_16", seed=7)
    soundfile.write(staging / "silence.wav", np.zeros(6 * 16000, np.float32), 16000)
    backlog |= {"long talk.wav": 24.0, "silence.wav": 6.0}
    late = {"after the outage.wav": 7.0, "also waiting.flac": 5.0}
    for name, seconds in late.items():
        write_soundfile(staging / name, seconds, 16000, "PCM_16", seed=len(name))
    dropped = {name: digest(staging / name) for name in [*backlog, *late]}
    listener = Listener()
    listener.start()
    servers = [Server(hosts, n, tiny_model, tls, latency) for n, latency in enumerate((0.5, 0.05))]
    for server in servers:  # started together, each loading the model meanwhile
        server.wait_listening()
    env = folders.env(
        tiny_model,
        TRANSCRIBED_ENGINE="vllm",
        TRANSCRIBED_MODEL=SERVED,
        TRANSCRIBED_VLLM_SERVERS=json.dumps([server.url for server in servers]),
        TRANSCRIBED_VLLM_API_KEY_FILE=str(tls / "api.key"),
        TRANSCRIBED_VLLM_CA_FILE=str(tls / "ca.pem"),
        TRANSCRIBED_VLLM_MAX_IN_FLIGHT="3",
        TRANSCRIBED_VLLM_TIMEOUT_SECONDS="20",
        TRANSCRIBED_CHUNK_SECONDS="5",
        TRANSCRIBED_SETTLE_SECONDS="0.5",
        TRANSCRIBED_RETRY_SECONDS="1",
        TRANSCRIBED_JOBS_AT_ONCE="3",
        TRANSCRIBED_REQUIRE_OFFLINE="true",  # only the servers may be reachable: they are
        NOTIFY_SOCKET=str(listener.path),
        TRANSCRIBED_TEST_ALLOWED_ADDRESSES=",".join([*hosts.addresses, "192.0.2.1", "2001:db8::1"]),
    )
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log, prefix=hosts.inside(hosts.daemon_ns))
    try:
        daemon.wait_ready(90)
        for name in backlog:
            (staging / name).rename(folders.inbox / name)

        def transcribed(names: dict[str, float]) -> int:
            return sum((folders.outbox / f"{Path(n).stem}.json").exists() for n in names)

        # Server A is killed with requests in flight (it takes 0.5 s for each answer).
        daemon.wait_for(lambda: transcribed(backlog) >= 3, 120)
        os.kill(servers[0].process.pid, signal.SIGKILL)
        servers[0].kill()
        daemon.wait_for(lambda: transcribed(backlog) == len(backlog), 180)
        daemon.wait_for(lambda: _archived(folders, backlog), 30)
        check_final(folders, {name: dropped[name] for name in backlog})

        # Now B too: new recordings wait, untouched, and the status says why.
        servers[1].kill()
        for name in late:
            (staging / name).rename(folders.inbox / name)

        def waiting_for_servers() -> bool:
            return any(
                event["event"] == "job.retry_later"
                and "0 of 2 engine servers up" in str(event.get("error"))
                for event in events(log)
            )

        daemon.wait_for(waiting_for_servers, 60)
        check_i1_i2(folders, dropped)
        assert transcribed(late) == 0
        status = cli("status", env=env)
        assert "0 of 2 engine servers up" in status.stdout, status.stdout + status.stderr
        daemon.wait_for(
            lambda: any("0 of 2 engine servers up" in line for line in listener.lines()), 15
        )

        # B comes back: the pool probes it and the waiting jobs finish.
        servers[1] = Server(hosts, 1, tiny_model, tls, 0.05).wait_listening()
        daemon.wait_for(lambda: transcribed(late) == len(late), 120)
        # Archived, not only published: a stop between the two leaves the disposal to the
        # next start (nothing lost), which is not what this test looks at.
        daemon.wait_for(lambda: _archived(folders, late), 30)
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        for server in servers:
            server.kill()
        listener.close()

    outcome = check_final(folders, dropped)
    assert outcome == {"transcribed": len(dropped), "failed": 0}
    happened = events(log)
    names = [event["event"] for event in happened]
    assert "network.only_engine_servers" in names  # the start-up check, in force
    downs = [e for e in happened if e["event"] == "engine.server_down"]
    assert {e["server"] for e in downs} == {servers[0].url, servers[1].url}
    assert "test.network_attempt" not in names
    text = log.read_text()
    assert KEY not in text and "Traceback" not in text
    spoken = [json.loads(path.read_text())["text"] for path in folders.outbox.glob("*.json")]
    assert not [words for words in spoken if len(words) > 12 and words in text]

    # The same JSON, key for key, as the resident model writes (the one-shot command, which
    # disposes of nothing and takes no request from a folder rule, has no "disposal" and no
    # "request").
    sample = tmp_path / "local" / "sample.wav"
    sample.parent.mkdir()
    write_soundfile(sample, 8, 16000, "PCM_16")
    transcribe_once(sample, tiny_model, chunk_seconds="5")
    local = json.loads(sample.with_suffix(".json").read_text())
    remote = json.loads((folders.outbox / "pcm16 mono 16k.json").read_text())
    daemon_only = {key: _keys(remote[key]) for key in ("disposal", "request")}
    assert _keys(remote) == _keys(local) | daemon_only
    assert remote["model"] == {"id": SERVED, "device": "vllm", "dtype": "auto"}
    silent = json.loads((folders.outbox / "silence.json").read_text())
    assert silent["status"] == "no_speech" and all(s["no_speech"] for s in silent["segments"])
