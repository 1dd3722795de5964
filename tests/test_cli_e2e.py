"""End to end: the real `transcribed` CLI in a subprocess, configured only by environment."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf

from recordings import make_mixed_recordings, make_unreadable, speechlike, write_soundfile
from running import NET_GUARD

CLI = [sys.executable, "-m", "transcribed"]
pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, "the daemon exited early"
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the daemon")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _slow_writer(path: Path, seconds: float) -> None:
    """One writer appending to a WAV over several seconds, as a recorder does."""
    data = (speechlike(4, 16000) * 32767).astype("int16")
    with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as out:
        for block in range(8):
            out.write(data[block * 8000 : (block + 1) * 8000])
            out.flush()
            time.sleep(seconds / 8)


def test_daemon_transcribes_a_mixed_inbox_archives_fails_and_stops_on_sigterm(
    folders, tiny_model, tmp_path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    durations = make_mixed_recordings(staging)
    unreadable = make_unreadable(staging)
    before_start = sorted(durations)[:5]
    for name in before_start + unreadable:
        (staging / name).rename(folders.inbox / name)
    digests = {name: _digest(staging / name) for name in durations if name not in before_start}
    digests |= {name: _digest(folders.inbox / name) for name in before_start}
    (folders.inbox / "empty.wav").write_bytes(b"")  # still arriving: waits, listed in status
    outside = tmp_path / "outside.wav"
    write_soundfile(outside, 1, 16000, "PCM_16")
    outside_before = (outside.read_bytes(), outside.stat().st_mtime_ns)
    (folders.inbox / "link to outside.wav").symlink_to(outside)

    log = (tmp_path / "daemon.log").open("w")
    env = folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="1.5", PYTHONPATH=str(NET_GUARD))
    daemon = subprocess.Popen([*CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for name in sorted(durations)[5:]:  # renamed in from a dot-named temp file
            temp = folders.inbox / f".{name}.upload"
            temp.write_bytes((staging / name).read_bytes())
            temp.rename(folders.inbox / name)
        writer = threading.Thread(target=_slow_writer, args=(folders.inbox / "slow writer.wav", 6))
        writer.start()
        writer.join()
        durations["slow writer.wav"] = 4.0
        digests["slow writer.wav"] = _digest(folders.inbox / "slow writer.wav")

        def all_done() -> bool:
            return (
                all((folders.outbox / f"{Path(n).stem}.json").exists() for n in durations)
                and all((folders.failed / f"{n}.error.json").exists() for n in unreadable)
                and not any((folders.inbox / n).exists() for n in durations)
                # Archived too: the JSON is visible a moment before the original is moved.
                and all((folders.archive / n).exists() for n in durations)
            )

        _wait_for(all_done, 120, daemon)
        stopped_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert time.monotonic() - stopped_at < 30
    finally:
        if daemon.poll() is None:
            daemon.kill()
        log.close()

    for name, seconds in durations.items():
        data = json.loads((folders.outbox / f"{Path(name).stem}.json").read_text())
        assert abs(data["duration"] - seconds) / seconds < 0.03, name
        assert {
            "text",
            "language",
            "segments",
            "source",
            "model",
            "created",
            "processing_seconds",
        } <= data.keys()
        assert data["source"]["name"] == name and data["source"]["sha256"] == digests[name]
        assert data["disposal"] == {
            "method": "move",
            "assurance": "kept",
            "filesystem": data["disposal"]["filesystem"],
            "rotational": data["disposal"]["rotational"],
        }
        assert (folders.outbox / f"{Path(name).stem}.txt").exists()
        assert _digest(folders.archive / name) == digests[name], "archived byte-identical"
    for name in unreadable:
        assert (folders.failed / name).exists()
        assert json.loads((folders.failed / f"{name}.error.json").read_text())["error"]
    assert (folders.inbox / "link to outside.wav").is_symlink(), "the symlink is left alone"
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == outside_before
    assert sorted(p.name for p in folders.inbox.iterdir()) == [
        ".transcribed-work",
        "empty.wav",
        "link to outside.wav",
    ]
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(events) == len(lines), "every log line is a JSON event"
    assert not any("Traceback" in line for line in lines)
    assert any(e["event"] == "intake.ignored" and "symbolic link" in e["reason"] for e in events)
    assert not any(e["event"] == "test.network_attempt" for e in events)


def test_one_shot_transcribe_writes_beside_the_file_or_to_outbox(tiny_model, tmp_path) -> None:
    audio = write_soundfile(tmp_path / "memo.flac", 3, 16000, "PCM_16", "FLAC")
    env = {**os.environ, "TRANSCRIBED_MODEL": str(tiny_model), "TRANSCRIBED_DEVICE": "cpu"}
    done = subprocess.run(
        [*CLI, "transcribe", str(audio)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "memo.json").read_text())["duration"] == 3
    assert audio.exists(), "one-shot never disposes of the original"
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "junk.mp3").write_text("not audio")
    done = subprocess.run(
        [*CLI, "transcribe", "--outbox", str(out), str(audio), str(tmp_path / "junk.mp3")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "junk.mp3" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["memo.json", "memo.txt"]


def test_user_errors_get_one_clear_message_and_no_traceback(folders, tmp_path) -> None:
    env = folders.env(Path("Qwen/Qwen3-ASR-1.7B-hf"), PYTHONPATH=str(NET_GUARD))
    del env["HF_HUB_OFFLINE"]  # the daemon itself must keep the hub offline
    missing_model = subprocess.run(
        [*CLI, "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing_model.returncode == 2
    assert "hf download Qwen/Qwen3-ASR-1.7B-hf" in missing_model.stderr
    env["TRANSCRIBED_OUTBOX"] = str(folders.inbox / "out")
    (folders.inbox / "out").mkdir()
    nested = subprocess.run([*CLI, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert nested.returncode == 2 and "inside the inbox" in nested.stderr
    for result in (missing_model, nested):
        assert "Traceback" not in result.stderr
        assert "test.network_attempt" not in result.stderr, "the model loads local files only"
    assert (
        "settle_seconds"
        in subprocess.run(
            [*CLI, "run", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )
