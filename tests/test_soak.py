"""Soak: many recordings, the daemon killed with SIGKILL at random moments, nothing lost.

CI runs a reduced form. The full form (200 recordings, 20 kills) is one command:
    TRANSCRIBED_SOAK_RECORDINGS=200 TRANSCRIBED_SOAK_KILLS=20 python -m pytest tests/test_soak.py
"""

import os
import random
import threading
import time
from pathlib import Path

import pytest

from support.invariants import check_final, check_i1_i2, digest, transcripts_by_name
from support.recordings import write_soundfile
from support.running import Daemon, events

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3 * 3600)]  # the full forms take a while

RECORDINGS = int(os.environ.get("TRANSCRIBED_SOAK_RECORDINGS", "40"))
KILLS = int(os.environ.get("TRANSCRIBED_SOAK_KILLS", "6"))


def _make(staging: Path, count: int) -> list[Path]:
    return [
        write_soundfile(staging / f"rec {n:04d}.wav", 0.5 + n % 4 * 0.5, 16000, "PCM_16", seed=n)
        for n in range(count)
    ]


class _Watcher(threading.Thread):
    """Looks at the outbox over and over while the soak runs: a partial or second transcript
    must never be visible, not even for an instant."""

    def __init__(self, outbox: Path) -> None:
        super().__init__(daemon=True)
        self.outbox, self.looks, self.problem = outbox, 0, ""
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                seen = transcripts_by_name(self.outbox)
                assert all(len(paths) == 1 for paths in seen.values()), "duplicate transcript"
            except FileNotFoundError:
                pass  # a temp file renamed between listing and reading: not a visible file
            except (AssertionError, ValueError) as error:
                self.problem = repr(error)
            self.looks += 1
            time.sleep(0.05)


def test_random_kills_lose_nothing_and_never_show_a_partial_or_second_transcript(
    folders, tiny_model, tmp_path
) -> None:
    rng = random.Random(20261121)
    staging = tmp_path / "staging"
    staging.mkdir()
    recordings = _make(staging, RECORDINGS)
    dropped = {path.name: digest(path) for path in recordings}
    log = tmp_path / "daemon.log"
    env = folders.env(tiny_model, TRANSCRIBED_SETTLE_SECONDS="0.5", TRANSCRIBED_RETRY_SECONDS="0.5")
    watcher = _Watcher(folders.outbox)
    watcher.start()
    waiting = list(recordings)
    per_round = max(1, len(waiting) // (KILLS + 1))
    for _kill in range(KILLS):
        for path in waiting[:per_round]:  # some arrive while the daemon is down…
            path.rename(folders.inbox / path.name)
        del waiting[:per_round]
        daemon = Daemon(env, log)
        if rng.random() < 0.8:  # most kills hit a working daemon; some hit it while starting
            daemon.wait_ready()
        deadline = time.monotonic() + rng.uniform(0.0, 5.0)
        while time.monotonic() < deadline:  # …some while it runs
            if waiting and rng.random() < 0.3:
                waiting[0].rename(folders.inbox / waiting.pop(0).name)
            time.sleep(0.1)
        daemon.kill()
        check_i1_i2(folders, {p.name: dropped[p.name] for p in recordings if p not in waiting})
    for path in waiting:
        path.rename(folders.inbox / path.name)
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: not any(p.is_file() for p in folders.inbox.rglob("*")), 600)
    finally:
        assert daemon.stop() == 0
        watcher.done.set()
        watcher.join()
    outcome = check_final(folders, dropped)
    assert not watcher.problem, watcher.problem
    assert outcome["transcribed"] + outcome["failed"] == RECORDINGS
    names = [str(event["event"]) for event in events(log)]
    print(
        f"soak: {RECORDINGS} recordings, {KILLS} kills, {names.count('daemon.ready')} ready,"
        f" {names.count('recover.requeued')} jobs cut short mid-run,"
        f" {names.count('recover.claims_finished')} claims finished after a kill,"
        f" {outcome}, {watcher.looks} looks at the outbox"
    )
