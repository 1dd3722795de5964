"""Crash at every durable step, restart, and check the invariants (real daemon processes).

The daemon is killed by the test-only fault switch right after a named step (os._exit: no
cleanup, no flush, like kill -9 at that instant). One chain of runs per disposal policy: each
run drops fresh files, crashes at the next step, and inherits whatever the last crash left.
"""

import json
import shutil
from pathlib import Path

import pytest

from support.invariants import (
    check_final,
    check_i1_i2,
    digest,
    transcripts_by_name,
    visible_transcripts,
)
from support.recordings import make_unreadable, write_soundfile
from support.running import Daemon, events
from transcribed.disposal.assurance import assess
from transcribed.faults import CRASH_EXIT_CODE

pytestmark = pytest.mark.slow

CLAIM_STEPS = ["db.claiming", "claim.renamed", "claim.fsynced", "claim.hashed", "db.queued"]
PUBLISH_STEPS = [
    "db.running",
    "outbox.json.written",
    "outbox.json.fsynced",
    "outbox.json.published",
    "outbox.txt.written",
    "outbox.txt.fsynced",
    "outbox.txt.published",
    "outbox.fsynced",
    "db.published",
]
MOVE_STEPS = [
    "db.duplicate",
    "db.disposal_target",
    "disposal.linked",
    "disposal.target_fsynced",
    "disposal.unlinked",
    "disposal.work_fsynced",
    "db.done",
    "reason.written",
    "reason.fsynced",
    "reason.published",
    "db.failed",
]
SHRED_STEPS = ["shred.overwritten", "disposal.unlinked", "db.done"]
DELETE_STEPS = ["disposal.unlinked", "db.done"]


def _drop(inbox: Path, staging: Path, round_number: int) -> dict[str, str]:
    """A new recording, a copy of it under another name, an unreadable file, and the last
    round's recording again under its own name; returns name -> sha256."""
    recording = write_soundfile(
        staging / f"r{round_number}.wav", 1 + round_number % 3, 16000, "PCM_16"
    )
    shutil.copyfile(recording, staging / f"copy of r{round_number}.wav")
    shutil.copyfile(recording, staging / f".again r{round_number}.wav")  # for the next round
    junk = staging / make_unreadable(staging)[round_number % 3]
    junk = junk.rename(staging / f"junk{round_number}{junk.suffix}")
    again = staging / f".again r{round_number - 1}.wav"
    again = again.rename(staging / f"r{round_number - 1}.wav") if again.exists() else None
    dropped = {}
    for path in (recording, staging / f"copy of r{round_number}.wav", junk, again):
        if path is not None:
            dropped[path.name] = digest(path)
            path.rename(inbox / path.name)
    return dropped


@pytest.mark.parametrize(
    ("policy", "steps"),
    [
        ("move", CLAIM_STEPS + PUBLISH_STEPS + MOVE_STEPS),
        ("shred", SHRED_STEPS),
        ("delete", DELETE_STEPS),
    ],
)
def test_a_crash_after_any_step_loses_nothing_and_duplicates_nothing(
    policy: str, steps: list[str], folders, tiny_model, tmp_path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    log = tmp_path / "daemon.log"
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_RETRY_SECONDS="0.2",
        # Consecutive steps crash on the same job; the quarantine after repeated crashes has
        # its own test (test_poison.py). Here every recording must come through.
        TRANSCRIBED_MAX_ATTEMPTS="100",
        TRANSCRIBED_DISPOSAL=policy,
    )
    dropped: dict[str, str] = {}
    unreadable: set[str] = set()
    for number, step in enumerate(steps):
        new = _drop(folders.inbox, staging, number)
        dropped |= new
        unreadable |= {name for name in new if name.startswith("junk")}
        daemon = Daemon({**env, "TRANSCRIBED_TEST_FAULTS": f"{step}@1=exit"}, log)
        assert daemon.wait_exit(90) == CRASH_EXIT_CODE, f"never reached {step}: {daemon.tail()}"
        check_i1_i2(folders, dropped)

    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        daemon.wait_for(lambda: not _pending(folders), 120)
    finally:
        assert daemon.stop() == 0
    if policy == "move":
        outcome = check_final(folders, dropped, frozenset(unreadable))
        assert outcome["failed"] == len(unreadable), "only the unreadable files failed"
    else:
        _check_erased(folders, dropped, unreadable, policy)
    assert not list(folders.outbox.rglob(".*.tmp")), "stale temp files are cleaned at start"
    assert not any("Traceback" in str(event) for event in events(log))


def _pending(folders) -> list[Path]:
    return [path for path in folders.inbox.rglob("*") if path.is_file()]


def _check_erased(folders, dropped: dict[str, str], unreadable: set[str], policy: str) -> None:
    """Each readable recording has one transcript and is gone; junk is failed, never erased."""
    check_i1_i2(folders, dropped)
    transcripts = visible_transcripts(folders.outbox)
    by_name = transcripts_by_name(folders.outbox)
    failed = {digest(p) for p in folders.failed.iterdir() if not p.name.endswith(".json")}
    for name, sha in dropped.items():  # each dropped name its own transcript (I2)
        assert (sha in failed) if name in unreadable else len(by_name[name, sha]) == 1, name
    expected = assess(policy, folders.inbox)
    for paths in transcripts.values():  # the JSON says what shredding achieved here
        for path in paths:
            assert json.loads(path.read_text())["disposal"] == expected.as_dict()
    assert _pending(folders) == [] and list(folders.archive.iterdir()) == []
