"""Files still being written are never taken; each is transcribed once, complete.

Four writers at once against one real daemon (settle window 3 s):
  recorder     open, append, finalize the header, close: every second, for 8 s
  preallocated full size of zeros first (as Windows Explorer does), then filled in pieces
  rsync        interrupted --partial: final name, truncated body, mtime 0, left alone for
               longer than the settle window; then the resumed transfer renames the whole file in
  trickle      the last bytes arrive one per second
"""

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support.invariants import digest, visible_transcripts
from support.recordings import speechlike
from support.running import Daemon, events

pytestmark = pytest.mark.slow
RATE = 16000


def _wav_bytes(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    samples = (speechlike(seconds, RATE, seed=seed) * 32767).astype(np.int16)
    sf.write(buffer, samples, RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _recorder(path: Path) -> None:
    """Each append rewrites a complete, valid WAV: only the settle window can tell."""
    for second in range(1, 9):
        path.write_bytes(_wav_bytes(second, seed=1)) if second == 1 else _append(path, second)
        time.sleep(1.0)


def _append(path: Path, seconds: int) -> None:
    whole = _wav_bytes(seconds, seed=1)
    with path.open("r+b") as handle:  # open, append the new second, fix the header, close
        handle.seek(0, os.SEEK_END)
        handle.write(whole[handle.tell() :])
        handle.seek(0)
        handle.write(whole[:44])


def _preallocated(path: Path) -> None:
    data = _wav_bytes(6, seed=2)
    with path.open("wb") as handle:
        handle.truncate(len(data))
        handle.flush()
        time.sleep(1.5)  # zeros only, for a while
        for start in range(0, len(data), len(data) // 10):
            handle.seek(start)
            handle.write(data[start : start + len(data) // 10])
            handle.flush()
            time.sleep(0.5)


def _rsync_partial(path: Path) -> None:
    data = _wav_bytes(5, seed=3)
    partial = path.with_name(f".{path.name}.Xa81Zq")  # rsync's temp name: ignored
    partial.write_bytes(data[: len(data) // 2])
    os.utime(partial, ns=(0, 0))
    partial.rename(path)  # interrupted: the partial file takes the final name
    time.sleep(7)  # longer than the settle window: only the header check holds it back
    resumed = path.with_name(f".{path.name}.Kp20sW")
    resumed.write_bytes(data)
    resumed.rename(path)


def _trickle(path: Path) -> None:
    data = _wav_bytes(3, seed=4)
    with path.open("wb") as handle:
        handle.write(data[:-6])
        handle.flush()
        for byte in data[-6:]:
            time.sleep(1.0)
            handle.write(bytes([byte]))
            handle.flush()


WRITERS = {
    "recorder.wav": (_recorder, 8),
    "preallocated.wav": (_preallocated, 6),
    "rsync.wav": (_rsync_partial, 5),
    "trickle.wav": (_trickle, 3),
}


def test_unfinished_files_wait_and_finished_ones_are_transcribed_once(
    folders, tiny_model, tmp_path
) -> None:
    log = tmp_path / "daemon.log"
    daemon = Daemon(folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="3"), log)
    try:
        daemon.wait_ready()
        threads = [
            threading.Thread(target=writer, args=(folders.inbox / name,))
            for name, (writer, _seconds) in WRITERS.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finals = {name: digest(folders.inbox / name) for name in WRITERS}
        daemon.wait_for(lambda: all((folders.archive / n).exists() for n in WRITERS), 60)
    finally:
        assert daemon.stop() == 0
    transcripts = visible_transcripts(folders.outbox)
    assert len(transcripts) == len(WRITERS), "one transcript per file, none of a partial state"
    for name, (_writer, seconds) in WRITERS.items():
        [path] = transcripts[finals[name]]
        assert path.name == name.replace(".wav", ".json")
        data = json.loads(path.read_text())
        assert abs(data["duration"] - seconds) < 0.01, name
        assert digest(folders.archive / name) == finals[name]
    assert list(folders.failed.iterdir()) == []
    waited = {e["file"] for e in events(log) if e["event"] == "intake.waiting"}
    assert "rsync.wav" in waited
