"""Hostile names and files in a shared inbox, against the real daemon.

No crash, no hang, nothing outside our folders read or changed (canaries keep bytes, mode and
mtime), names escaped in the logs, one transcript per content.
"""

import os
import shutil
import stat
import unicodedata
from pathlib import Path

import pytest

from invariants import check_i1_i2, digest, visible_transcripts
from recordings import write_soundfile
from running import Daemon, events

pytestmark = pytest.mark.slow


def _snapshot(path: Path) -> tuple[bytes, int, int]:
    info = path.stat()
    return path.read_bytes(), info.st_mode, info.st_mtime_ns


def _fill_inbox(inbox: Path, outside: Path, staging: Path) -> tuple[dict[bytes, str], list[str]]:
    """Returns recordings dropped (raw name -> sha256) and the names that must be refused."""
    recording = write_soundfile(staging / "one.wav", 1, 16000, "PCM_16", seed=7)
    recordings: dict[bytes, str] = {}

    def drop(name: bytes, seed: int | None = None) -> None:
        source = (
            recording
            if seed is None
            else write_soundfile(staging / f"{seed}.wav", 1, 16000, "PCM_16", seed=seed)
        )
        target = os.path.join(os.fsencode(inbox), name)
        shutil.copyfile(source, target)
        recordings[name] = digest(Path(os.fsdecode(target)))

    for copy in range(100):  # one recording under 100 names: one transcript
        drop(f"copy {copy:03d}.wav".encode())
    drop(b"new\nline.wav", seed=1)
    drop(b"bad \xff\xfe utf8.wav", seed=2)
    drop(b"-rf --no-preserve-root.wav", seed=3)
    drop(b"a" * 251 + b".wav", seed=4)
    drop(b"concat:one.wav|two.wav", seed=5)
    drop(unicodedata.normalize("NFC", "café.wav").encode(), seed=6)
    drop(unicodedata.normalize("NFD", "café.wav").encode(), seed=6)  # same content, twin name
    (inbox / "x.wav").mkdir()  # a folder with an audio name: entered, never opened as a file
    drop(b"x.wav/inside.wav", seed=8)
    drop(b"target.wav", seed=9)
    (inbox / "playlist.mp4").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{outside / 'canary.wav'}\n#EXT-X-ENDLIST\n"
    )
    recordings[b"playlist.mp4"] = digest(inbox / "playlist.mp4")

    (inbox / "link out.wav").symlink_to(outside / "canary.wav")
    (inbox / "link in.wav").symlink_to(inbox / "target.wav")
    (inbox / "linked folder").symlink_to(outside, target_is_directory=True)
    os.link(outside / "hard canary.wav", inbox / "hard link.wav")
    os.mkfifo(inbox / "pipe.wav")
    refused = ["link out.wav", "link in.wav", "pipe.wav"]
    try:
        os.mknod(inbox / "device.wav", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
        refused.append("device.wav")
    except PermissionError:
        pass  # not root: the kernel will not let anyone make one here
    return recordings, refused


def test_hostile_names_and_files_are_handled_and_nothing_outside_is_touched(
    folders, tiny_model, tmp_path
) -> None:
    outside, staging = tmp_path / "outside", tmp_path / "staging"
    outside.mkdir()
    staging.mkdir()
    write_soundfile(outside / "canary.wav", 1, 16000, "PCM_16", seed=11)
    write_soundfile(outside / "hard canary.wav", 1, 16000, "PCM_16", seed=12)
    write_soundfile(outside / "in linked folder.wav", 1, 16000, "PCM_16", seed=13)
    canaries = {path: _snapshot(path) for path in outside.iterdir()}
    recordings, refused = _fill_inbox(folders.inbox, outside, staging)

    log = tmp_path / "daemon.log"
    daemon = Daemon(folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="0.5"), log)
    try:
        daemon.wait_ready()
        daemon.wait_for(
            lambda: (
                not [
                    p
                    for p in folders.inbox.rglob("*")
                    if p.is_file()
                    and not p.is_symlink()
                    and p.stat().st_nlink == 1
                    and not stat.S_ISFIFO(p.lstat().st_mode)
                ]
            ),
            180,
        )
    finally:
        assert daemon.stop() == 0

    assert {path: _snapshot(path) for path in outside.iterdir()} == canaries, "I3"
    names = {os.fsdecode(name): sha for name, sha in recordings.items()}
    check_i1_i2(folders, names)
    transcripts = visible_transcripts(folders.outbox)
    contents = set(recordings.values()) - {recordings[b"playlist.mp4"]}
    assert set(transcripts) == contents, "every content transcribed"
    assert (folders.failed / "playlist.mp4.error.json").exists()
    assert (folders.outbox / "x.wav" / "inside.json").exists()
    assert os.path.exists(os.fsencode(folders.outbox) + b"/bad \xff\xfe utf8.json")
    long_stem = [p for p in folders.outbox.iterdir() if p.name.startswith("aaaa")]
    assert len(long_stem) == 2 and all(len(os.fsencode(p.name)) <= 255 for p in long_stem)
    archived = sorted(os.listdir(os.fsencode(folders.archive)))
    assert len(archived) == len(recordings) - 1 - 1 + 1  # minus playlist and x.wav/…, plus x.wav

    for name in refused:
        assert os.path.lexists(folders.inbox / name), f"{name} is left where it was"
    text = log.read_bytes().decode("utf-8")  # strict: raw invalid bytes never reach the log
    logged = events(log)
    ignored = {e["file"] for e in logged if e["event"] == "intake.ignored"}
    assert set(refused) <= ignored
    waiting = {e["file"] for e in logged if e["event"] in ("intake.waiting", "intake.claim_failed")}
    assert "hard link.wav" in waiting, "a second name waits: the other name would keep the data"
    assert os.path.lexists(folders.inbox / "hard link.wav")
    assert "new\\\\x0aline.wav" in text or "new\\\\nline.wav" in text, "the newline is escaped"
    assert "bad \\\\xff\\\\xfe utf8.wav" in text
