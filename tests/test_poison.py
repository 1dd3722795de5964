"""Poison files: one that crashes or hangs the decoder, one that kills the whole daemon.

Each is retried with backoff and quarantined after max_attempts (3) with a reason file,
while the other recordings keep flowing. The faults are injected with the test-only switch
inside the real decoder child and the real daemon process.
"""

import json

import pytest

from support.invariants import check_final, digest
from support.recordings import write_soundfile
from support.running import Daemon, events
from transcribed.faults import CRASH_EXIT_CODE

pytestmark = pytest.mark.slow


def _drop(folders, names: list[str]) -> dict[str, str]:
    dropped = {}
    for seed, name in enumerate(names):
        path = write_soundfile(folders.inbox / f".{name}", 1, 16000, "PCM_16", seed=seed)
        dropped[name] = digest(path)
        path.rename(folders.inbox / name)
    return dropped


def test_a_file_that_crashes_or_hangs_the_decoder_is_quarantined_while_others_flow(
    folders, tiny_model, tmp_path
) -> None:
    dropped = _drop(folders, ["crash me.wav", "hang me.wav", "good 1.wav", "good 2.wav"])
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.5",
        TRANSCRIBED_RETRY_SECONDS="0.5",
        TRANSCRIBED_DECODE_TIMEOUT_SECONDS="2",
        TRANSCRIBED_TEST_FAULTS="decoder.child~crash me=exit;decoder.child~hang me=hang",
    )
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log)
    try:
        daemon.wait_for(lambda: len(list(folders.failed.glob("*.error.json"))) == 2, 120)
    finally:
        assert daemon.stop() == 0
    check_final(folders, dropped, frozenset({"crash me.wav", "hang me.wav"}))
    crash = json.loads((folders.failed / "crash me.wav.error.json").read_text())
    hang = json.loads((folders.failed / "hang me.wav.error.json").read_text())
    assert crash["attempts"] == 3 and "decoder process died" in crash["error"]
    assert hang["attempts"] == 3 and "no progress for 2 s" in hang["error"]
    order = [
        (e["event"], e.get("job")) for e in events(log) if e["event"] in ("job.done", "job.failed")
    ]
    assert order.index(("job.done", 3)) < order.index(("job.failed", 1)), "others kept flowing"


def test_a_file_that_kills_the_daemon_is_quarantined_after_three_deaths_not_a_crash_loop(
    folders, tiny_model, tmp_path
) -> None:
    dropped = _drop(folders, ["killer.wav", "fine.wav"])
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.5",
        TRANSCRIBED_RETRY_SECONDS="0.5",
        TRANSCRIBED_TEST_FAULTS="job.decoding~killer=exit",
    )
    log = tmp_path / "daemon.log"
    deaths = 0
    for _start in range(3):  # what systemd's Restart=on-failure does
        deaths += Daemon(env, log).wait_exit(60) == CRASH_EXIT_CODE
    assert deaths == 3
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: (folders.failed / "killer.wav.error.json").exists(), 60)
    finally:
        assert daemon.stop() == 0
    check_final(folders, dropped, frozenset({"killer.wav"}))
    report = json.loads((folders.failed / "killer.wav.error.json").read_text())
    assert report["attempts"] == 3 and "daemon stopped during each of 3 attempts" in report["error"]
