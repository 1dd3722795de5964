"""`transcribed status` with the daemon stopped: what waits in the inbox and why, seen with
the intake's own filters and checks, and nothing touched."""

import json
import os
from pathlib import Path

from recordings import write_soundfile
from running import cli
from transcribed.state.queue import JobQueue

TAKEN_AT_START = "ready: taken when the daemon starts"


def _unfinished_wav(path: Path) -> Path:
    """A recorder still writing: RIFF size 0 until it finishes."""
    data = bytearray(write_soundfile(path, 1, 16000, "PCM_16").read_bytes())
    data[4:8] = bytes(4)
    path.write_bytes(bytes(data))
    return path


def _inbox(inbox: Path) -> dict[str, str]:
    """An inbox holding one of each kind of entry; what the survey must say of each."""
    write_soundfile(inbox / "ready.wav", 1, 16000, "PCM_16")
    _unfinished_wav(inbox / "recording.wav")
    (inbox / "notes.txt").write_text("agenda")
    (inbox / "sub").mkdir()
    write_soundfile(inbox / "sub" / "deep.flac", 1, 16000)
    (inbox / "two names.wav").write_bytes((inbox / "ready.wav").read_bytes())
    os.link(inbox / "two names.wav", inbox / "sub" / "other name.wav")
    (inbox / "link.wav").symlink_to(inbox / "ready.wav")
    os.mkfifo(inbox / "pipe.wav")
    (inbox / ".hidden.wav").write_bytes(b"x")
    (inbox / "copying.wav.part").write_bytes(b"x")
    return {
        "ready.wav": TAKEN_AT_START,
        "recording.wav": "looks unfinished: WAV header not finalized yet",
        "notes.txt": "left alone: not a recording: .txt is not an audio extension",
        "sub/deep.flac": TAKEN_AT_START,
        "two names.wav": "waits: has 2 hard links",
        "sub/other name.wav": "waits: has 2 hard links",
        "link.wav": "left alone: symbolic link",
        "pipe.wav": "left alone: not a regular file",
    }


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(path.relative_to(root)): (info.st_ino, info.st_size, info.st_mtime_ns)
        for path in root.rglob("*")
        for info in [path.lstat()]
    }


def test_the_survey_says_what_the_intake_would_do_and_touches_nothing(folders) -> None:
    """Every entry gets the intake's own verdict; temp and hidden names are not listed; no
    file is moved, changed or claimed, and no work folder is made."""
    from transcribed.intake.survey import survey

    expected = _inbox(folders.inbox)
    before = _snapshot(folders.inbox)
    found = {item.file: item.reason for item in survey(folders.inbox)}
    assert set(found) == set(expected)
    for name, reason in expected.items():
        assert found[name].startswith(reason), (name, found[name])
    assert _snapshot(folders.inbox) == before


def test_status_with_the_daemon_stopped_lists_the_inbox(folders, tiny_model, tmp_path) -> None:
    """The README's promise: with no daemon running, status shows what waits and why."""
    JobQueue(folders.state / "jobs.sqlite3").close()
    expected = _inbox(folders.inbox)
    config = tmp_path / "c.toml"
    config.write_text(f'inbox = "{folders.inbox}"\nstate_dir = "{folders.state}"\n')
    env = {k: v for k, v in folders.env(tiny_model).items() if not k.startswith("TRANSCRIBED_")}
    done = cli("status", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "daemon   not running" in done.stdout
    assert f"waiting  ready.wav: {TAKEN_AT_START}" in done.stdout
    assert "waiting  recording.wav: looks unfinished: WAV header not finalized" in done.stdout
    report = json.loads(cli("status", "--json", "--config", str(config), env=env).stdout)
    assert {item["file"] for item in report["waiting"]} == set(expected)
    assert report["waiting_seen_in"] == "inbox"
    assert not (folders.inbox / ".transcribed-work").exists()
