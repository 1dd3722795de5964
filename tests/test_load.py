"""Load and memory: a burst of small files and a very long recording, on the real daemon.

CI runs reduced forms. The full forms (10,000 files; a 3-hour recording) are one command:
    TRANSCRIBED_LOAD_FILES=10000 TRANSCRIBED_LOAD_HOURS=3 python -m pytest tests/test_load.py -s
"""

import json
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support.invariants import check_final, digest
from support.recordings import speechlike
from support.running import Daemon, events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3 * 3600)]  # the full forms take a while

FILES = int(os.environ.get("TRANSCRIBED_LOAD_FILES", "300"))
HOURS = float(os.environ.get("TRANSCRIBED_LOAD_HOURS", "1"))
BASE_MINUTES = 15  # several full batches: the model's own working memory is all in use
RATE = 16000
JOBS_AT_ONCE = 4  # the default


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory of `pid` plus its children (the decoder), in MiB."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    total_kib = 0
    for each in pids:
        status = Path(f"/proc/{each}/status").read_text()
        total_kib += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total_kib / 1024


def _write_long(path: Path, minutes: float) -> None:
    """Written a minute at a time: the test itself must not hold hours of audio either."""
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16", format="FLAC") as out:
        for minute in range(int(minutes)):
            out.write(speechlike(60, RATE, seed=minute))


def _run_one(folders, tiny_model, log: Path, path: Path) -> tuple[float, dict]:
    """Transcribe one recording with a fresh daemon; its peak RSS and the transcript."""
    name = path.name
    path.rename(folders.inbox / name)
    daemon = Daemon(folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="0.5"), log)
    try:
        daemon.wait_ready()
        json_path = folders.outbox / f"{Path(name).stem}.json"
        daemon.wait_for(lambda: (folders.archive / name).exists(), 3600)
        peak = _peak_rss_mb(daemon.process.pid)
    finally:
        assert daemon.stop() == 0
    return peak, json.loads(json_path.read_text())


def test_memory_does_not_grow_with_recording_length(folders, tiny_model, tmp_path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    _write_long(staging / "short.flac", BASE_MINUTES)
    _write_long(staging / "long.flac", HOURS * 60)
    log = tmp_path / "daemon.log"
    short_peak, _ = _run_one(folders, tiny_model, log, staging / "short.flac")
    long_peak, transcript = _run_one(folders, tiny_model, log, staging / "long.flac")
    assert transcript["duration"] == HOURS * 3600
    assert transcript["segments"][-1]["end"] == HOURS * 3600
    whole_file_mib = HOURS * 3600 * RATE * 4 / 2**20  # what holding it as float32 would take
    print(
        f"memory: peak RSS {short_peak:.0f} MiB for {BASE_MINUTES} min, {long_peak:.0f} MiB for"
        f" {HOURS:g} h (the decoded recording alone would be {whole_file_mib:.0f} MiB)"
    )
    assert long_peak - short_peak < min(100, whole_file_mib / 4)


def test_a_burst_of_small_files_is_taken_in_arrival_order_and_nothing_is_lost(
    folders, tiny_model, tmp_path
) -> None:
    log = tmp_path / "daemon.log"
    daemon = Daemon(folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="1"), log)
    dropped = {}
    try:
        daemon.wait_ready()
        for number in range(FILES):  # as fast as we can: inotify may well overflow
            name = f"burst {number:05d}.wav"
            samples = (speechlike(0.25, RATE, seed=number) * 32767).astype(np.int16)
            sf.write(folders.inbox / name, samples, RATE, subtype="PCM_16")
            dropped[name] = digest(folders.inbox / name)
        daemon.wait_for(lambda: len(os.listdir(folders.archive)) == FILES, 3600)
        peak = _peak_rss_mb(daemon.process.pid)
    finally:
        assert daemon.stop() == 0
    check_final(folders, dropped)
    logged = events(log)
    claimed = [e["file"] for e in logged if e["event"] == "intake.claimed"]
    started = [e["file"] for e in logged if e["event"] == "job.started"]
    done = [e["file"] for e in logged if e["event"] == "job.done"]
    assert claimed == sorted(dropped), "claimed in arrival order"
    # Several jobs run at once, so one may start or finish just before an earlier one; a
    # file is never passed over for long.
    for order, slack in ((started, JOBS_AT_ONCE), (done, 2 * JOBS_AT_ONCE)):
        assert sorted(order) == claimed
        assert max(abs(claimed.index(name) - order.index(name)) for name in order) < slack
    seconds = _seconds_between(logged[0]["timestamp"], logged[-1]["timestamp"])
    print(f"burst: {FILES} files in {seconds:.0f} s, peak RSS {peak:.0f} MiB")


def _seconds_between(first: object, last: object) -> float:
    return (datetime.fromisoformat(str(last)) - datetime.fromisoformat(str(first))).total_seconds()
