"""Privacy: no network, no transcript text or audio in logs or temp files, exact file modes."""

import json
import os
import stat
import subprocess
import sys

import pytest

from support.recordings import make_unreadable, write_soundfile
from support.running import NET_GUARD, Daemon, events

pytestmark = pytest.mark.slow


def test_the_network_guard_in_child_processes_catches_a_connect(tmp_path) -> None:
    """The guard every daemon test runs under really fires (else its silence proves nothing)."""
    attempt = "import socket; socket.create_connection(('203.0.113.7', 80), timeout=1)"
    done = subprocess.run(
        [sys.executable, "-c", attempt],
        env={**os.environ, "PYTHONPATH": str(NET_GUARD)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "test.network_attempt" in done.stderr


def test_processing_is_offline_leaves_no_text_or_audio_behind_and_sets_exact_modes(
    folders, tiny_model, tmp_path
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    for seed in range(3):
        path = write_soundfile(folders.inbox / f".talk {seed}.wav", 20, 16000, "PCM_16", seed=seed)
        path.rename(folders.inbox / f"talk {seed}.wav")
    junk = make_unreadable(folders.inbox)
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_OUTPUT_MODE="0604",
        TMPDIR=str(private_tmp),
    )
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log, umask=0o077)  # the configured mode wins over the umask
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: len(list(folders.failed.glob("*.error.json"))) == len(junk), 60)
        daemon.wait_for(lambda: len(list(folders.archive.iterdir())) == 3, 60)
    finally:
        assert daemon.stop() == 0

    outputs = [*folders.outbox.iterdir(), *folders.failed.glob("*.error.json")]
    assert len(outputs) == 6 + len(junk)
    assert {stat.S_IMODE(path.stat().st_mode) for path in outputs} == {0o604}
    assert list(private_tmp.rglob("*")) == [], "no temp files, so no decoded audio on disk"
    assert list((folders.inbox / ".transcribed-work").iterdir()) == []
    logged = events(log)
    assert not [e for e in logged if e["event"] == "test.network_attempt"]
    text = log.read_text()
    texts = set()
    for path in folders.outbox.glob("*.json"):
        data = json.loads(path.read_text())
        texts |= {data["text"], *(segment["text"] for segment in data["segments"])}
    texts = {text for text in texts if len(text) >= 4}
    assert texts, "the tiny model wrote something, so the check below has teeth"
    assert [t for t in texts if t in text] == [], "transcript text never reaches the log"
