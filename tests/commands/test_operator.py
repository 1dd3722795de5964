"""Operator commands against a real daemon's database: status, jobs list|retry|forget,
doctor and config show, each run as the real CLI in a subprocess."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import hashed
from support.recordings import write_soundfile
from support.running import CLI, Daemon, cli, events
from transcribed.state.instance import Holder
from transcribed.state.overview import render_status, service_status, status_report
from transcribed.state.queue import JobQueue


def status(env: dict[str, str]) -> dict:
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def jobs(env: dict[str, str]) -> list[dict]:
    done = cli("jobs", "list", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def started(daemon: Daemon, name: str) -> list[dict]:
    return [e for e in events(daemon.log_path) if e["event"] == "job.started" and e["file"] == name]


def drop(folders, name: str, seed: int, seconds: float = 2) -> None:
    hidden = write_soundfile(folders.inbox / f".{name}", seconds, 16000, "PCM_16", seed=seed)
    hidden.rename(folders.inbox / name)


@pytest.mark.slow
def test_status_jobs_retry_and_forget_while_the_daemon_runs(folders, tiny_model, tmp_path):
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_MAX_ATTEMPTS="1",
        TRANSCRIBED_LANGUAGE="zh",  # a known language for `jobs list` to show
    )
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        drop(folders, "good.wav", seed=1)
        (folders.inbox / "broken.mp3").write_bytes(b"not audio at all" * 100)
        daemon.wait_for(lambda: status(env)["counts"] == {"done": 1, "failed": 1}, 60)

        text = cli("status", env=env).stdout
        assert "0 queued, 0 running, 1 done, 1 failed" in text
        assert "broken.mp3: not a readable audio file" in text
        assert "last hour: 1 recording, 0:02 of audio" in text
        report = status(env)
        assert report["failed"][0]["kind"] == "unreadable"
        assert report["last_hour"]["audio_seconds"] == 2.0
        rows = {row["file"]: row for row in jobs(env)}
        assert rows["good.wav"]["state"] == "done" and rows["broken.mp3"]["state"] == "failed"
        published = json.loads((folders.outbox / "good.json").read_text())
        assert rows["good.wav"]["language"] == published["language"] == "zh"
        assert "language" in rows["broken.mp3"] and rows["broken.mp3"]["language"] is None

        # retry: back into the inbox, taken again (and quarantined again: it is still junk).
        failed_id, done_id = rows["broken.mp3"]["id"], rows["good.wav"]["id"]
        retried = cli("jobs", "retry", str(failed_id), env=env)
        assert retried.returncode == 0, retried.stderr
        assert "back in the inbox" in retried.stdout
        daemon.wait_for(lambda: len(started(daemon, "broken.mp3")) == 2, 30)
        daemon.wait_for(lambda: status(env)["counts"].get("failed") == 1, 60)
        daemon.wait_for(lambda: (folders.failed / "broken.mp3").exists(), 30)
        assert sorted(p.name for p in folders.failed.iterdir()) == [
            "broken.mp3",
            "broken.mp3.error.json",
        ], "the old failed copy was moved, not duplicated"

        # forget: the same content dropped again is transcribed anew, not a duplicate.
        refused = cli("jobs", "retry", str(done_id), env=env)
        assert refused.returncode == 1 and "only failed jobs" in refused.stderr
        assert cli("jobs", "forget", str(done_id), env=env).returncode == 0
        drop(folders, "good-again.wav", seed=1)
        daemon.wait_for(lambda: (folders.outbox / "good-again.json").exists(), 60)
        assert cli("jobs", "forget", "9999", env=env).returncode == 1

        # Found by the adversary: a daemon stopped (SIGSTOP) or hung was shown as running.
        # Its beat is its lock file's mtime: set back here instead of waiting 90 s.
        assert status(env)["daemon"]["silent_seconds"] is None
        daemon.process.send_signal(signal.SIGSTOP)
        try:
            long_ago = time.time() - 300
            os.utime(folders.state / "daemon.lock", (long_ago, long_ago))
            assert status(env)["daemon"]["silent_seconds"] >= 300
            said = cli("status", env=env).stdout
            assert "but silent for 5:0" in said and "stopped or hung" in said
        finally:
            daemon.process.send_signal(signal.SIGCONT)
    finally:
        assert daemon.stop() == 0


def test_status_shows_progress_and_an_eta(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs.sqlite3")
    job_id = queue.begin_claim(b"talk.wav", "w1")
    queue.finish_claim(job_id, hashed("ab" * 32, 100))
    job = queue.next_job()
    assert job is not None
    queue.record_progress(job_id, 30.0, 120.0)
    started = queue.get(job_id).started
    assert started is not None
    live = Holder(pid=1, since=started - 60, alive_at=started + 10, ready=True)
    report = status_report(queue, now=started + 10, daemon=live)
    running = report["running"][0]
    assert (running["percent"], running["eta_seconds"]) == (25, 30)
    assert "talk.wav: 25% (0:30 of 2:00 audio), about 0:30 left" in render_status(report)
    assert service_status(queue) == "0 queued, 1 running, 0 done, 0 failed; now talk.wav 25%"
    queue.mark_published(job_id, ["/out/talk.json"], 120.0, 30.0)
    assert service_status(queue).startswith(
        "0 queued, 0 running, 0 done, 0 failed, 1 waiting for disposal; last talk.wav"
    )
    queue.mark_done(job_id)
    assert service_status(queue).startswith("0 queued, 0 running, 1 done, 0 failed; last talk.wav")


def test_status_without_a_database_says_what_to_do(folders, tiny_model) -> None:
    done = cli("status", env=folders.env(tiny_model))
    assert done.returncode == 2
    assert "no job database" in done.stderr and "Traceback" not in done.stderr


def doctor(env: dict[str, str], *prefix: str) -> tuple[int, dict[str, dict]]:
    done = subprocess.run(
        [*prefix, *CLI, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, {row["check"]: row for row in json.loads(done.stdout)}


def test_doctor_passes_a_good_setup_and_fails_what_is_broken(folders, tiny_model) -> None:
    code, found = doctor(folders.env(tiny_model))
    assert code == 0, found
    expected = {"config", "folders", "filesystems", "state", "disk", "inotify", "model", "gpu"}
    assert expected | {"network", "disposal"} <= set(found)
    assert all(found[name]["level"] == "ok" for name in expected)

    code, found = doctor(folders.env(tmp := folders.state / "no-such-model"))
    assert code == 1 and found["model"]["level"] == "fail"
    assert str(tmp) in found["model"]["message"]

    env = folders.env(tiny_model, TRANSCRIBED_OUTBOX=str(folders.state / "missing"))
    code, found = doctor(env)
    assert code == 1 and "outbox" in found["folders"]["message"]

    text = cli("doctor", env=folders.env(tiny_model, TRANSCRIBED_MAX_ATTEMPTS="0")).stdout
    assert text.startswith("fail  config") and "max_attempts" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_doctor_fails_device_cuda_without_a_gpu(folders, tiny_model) -> None:
    code, found = doctor(folders.env(tiny_model, TRANSCRIBED_DEVICE="cuda"))
    assert code == 1 and found["gpu"]["level"] == "fail"
    cpu_only = torch.version.cuda is None
    assert ("CPU-only build" if cpu_only else "no usable CUDA GPU") in found["gpu"]["message"]
    assert ("pytorch.org" if cpu_only else "nvidia-smi") in found["gpu"]["hint"]
    _, found = doctor(folders.env(tiny_model, TRANSCRIBED_DEVICE="auto"))
    assert found["gpu"]["level"] == "warn" and "CPU" in found["gpu"]["message"]


def test_doctor_reports_network_isolation(folders, tiny_model) -> None:
    code, found = doctor(folders.env(tiny_model, TRANSCRIBED_REQUIRE_OFFLINE="true"))
    if found["network"]["level"] == "ok":
        pytest.skip("this machine has no network interface at all")
    assert code == 1 and found["network"]["level"] == "fail"
    assert "PrivateNetwork=yes" in found["network"]["hint"]
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("a network namespace needs unshare and root")
    code, found = doctor(folders.env(tiny_model, TRANSCRIBED_REQUIRE_OFFLINE="true"), unshare, "-n")
    assert code == 0 and found["network"]["level"] == "ok", found["network"]


def test_config_show_names_where_each_value_came_from(folders, tiny_model, tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('batch_size = 4\nformats = ["txt", "json", "srt"]\noutput_mode = "0600"\n')
    env = folders.env(tiny_model)
    done = cli("config", "show", "--json", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["batch_size"] == {"value": 4, "source": f"file {config}"}
    assert shown["formats"]["value"] == ["txt", "json", "srt"]
    assert shown["output_mode"]["value"] == "0600"
    assert shown["device"] == {"value": "cpu", "source": "environment TRANSCRIBED_DEVICE"}
    assert shown["chunk_seconds"] == {"value": 30.0, "source": "default"}
    text = cli("config", "show", "--config", str(config), env=env).stdout
    assert f"batch_size              4  (file {config})" in text
