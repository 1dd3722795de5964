"""Real writers, each ending with a transcript of its final content and that content archived
(issue "Trust, part 2", done-when table): a Python writer that pauses mid-file (MP3, FLAC,
AAC), `ffmpeg -re` writing WAV, MP3 and Opus into the inbox as a recorder does, and a file
opened empty before its first write; with the archive on the inbox's filesystem and on
another one (a tmpfs).

All writers of one run write into the inbox at once, beside one daemon. The pause is
TRANSCRIBED_WRITER_PAUSE seconds (4 in CI; the README's table was made with 10).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from invariants import digest
from recordings import write_pyav, write_soundfile
from running import Daemon, cli

pytestmark = pytest.mark.slow

PAUSE = float(os.environ.get("TRANSCRIBED_WRITER_PAUSE", "4"))
SECONDS = 6.0  # each recording's length; ffmpeg -re takes that long to write it

_PAUSING = """
import os, sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as out:
    out.write(data[: len(data) // 3]); out.flush(); os.fsync(out.fileno())
    time.sleep(float(sys.argv[3]))
    out.write(data[len(data) // 3 :])
"""

_EMPTY_FIRST = """
import sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as out:
    time.sleep(float(sys.argv[3]))
    out.write(data)
"""


def _sources(folder: Path) -> dict[str, Path]:
    return {
        "pause.mp3": write_soundfile(folder / "a.mp3", SECONDS, 44100, "MPEG_LAYER_III", "MP3"),
        "pause.flac": write_soundfile(folder / "a.flac", SECONDS, 44100, "PCM_16", "FLAC", seed=1),
        "pause.aac": write_pyav(folder / "a.aac", SECONDS, 44100, "aac", "adts"),
        "empty-first.wav": write_soundfile(folder / "a.wav", SECONDS, 16000, "PCM_16", seed=2),
    }


def _start_writers(inbox: Path, sources: dict[str, Path]) -> list[subprocess.Popen[bytes]]:
    scripts = {"pause": _PAUSING, "empty-first": _EMPTY_FIRST}
    started = []
    for name, source in sources.items():
        script = scripts[name.split(".")[0]]
        writer = [sys.executable, "-c", script, str(source), str(inbox / name), f"{PAUSE}"]
        started.append(subprocess.Popen(writer))
    speech = str(sources["empty-first.wav"])
    for name, codec in FFMPEG_RECORDERS:
        recorder = ["ffmpeg", "-loglevel", "error", "-re", "-i", speech, "-c:a", codec]
        started.append(subprocess.Popen([*recorder, str(inbox / name)]))
    return started


FFMPEG_RECORDERS = (
    ("ffmpeg.wav", "pcm_s16le"),
    ("ffmpeg.mp3", "libmp3lame"),
    ("ffmpeg.opus", "libopus"),
)


def _mount_tmpfs(folder: Path) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.parametrize("archive_on", ["the inbox's filesystem", "another filesystem"])
def test_real_writers_end_transcribed_and_archived_whole(
    folders, tiny_model, tmp_path, archive_on: str
) -> None:
    if shutil.which("ffmpeg") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs ffmpeg (.ci/run): this test must not be skipped there")
        pytest.skip("the ffmpeg program is not installed")
    elsewhere = archive_on == "another filesystem"
    if elsewhere and not _mount_tmpfs(folders.archive):
        pytest.skip("mounting a tmpfs needs root")
    try:
        _check_writers(folders, tiny_model, tmp_path)
    finally:
        if elsewhere:
            subprocess.run(["umount", "-l", str(folders.archive)], check=False)


def _check_writers(folders, tiny_model, tmp_path: Path) -> None:
    staging = tmp_path / "sources"
    staging.mkdir()
    sources = _sources(staging)
    env = folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="3", TRANSCRIBED_JOBS_AT_ONCE="2")
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        writers = _start_writers(folders.inbox, sources)
        assert all(writer.wait(60) == 0 for writer in writers)
        finished = time.monotonic()
        daemon.wait_for(lambda: _counts(env) == {"done": 7}, 120)
    finally:
        assert daemon.stop() == 0
    transcripts = {
        json.loads(path.read_text())["source"]["name"]: json.loads(path.read_text())
        for path in folders.outbox.glob("*.json")
    }
    archived = {path.name: digest(path) for path in folders.archive.iterdir()}
    assert sorted(transcripts) == sorted(archived) and len(archived) == 7, (transcripts, archived)
    for name, transcript in transcripts.items():
        assert transcript["source"]["sha256"] == archived[name], name
        assert transcript["duration"] == pytest.approx(SECONDS, abs=0.6), name
        if name in sources:
            assert archived[name] == digest(sources[name]), name
    assert list(folders.failed.iterdir()) == []
    assert list((folders.inbox / ".transcribed-work").iterdir()) == []
    took = time.monotonic() - finished
    print(f"all seven transcribed and archived {took:.1f} s after the last write")


def _counts(env: dict[str, str]) -> dict[str, int]:
    done = cli("status", "--json", env=env)
    return json.loads(done.stdout)["counts"] if done.returncode == 0 else {}
