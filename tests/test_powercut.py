"""Power cuts, not only kill -9 (kill -9 keeps the page cache; a power cut does not): the
real daemon with every folder on a disk that loses what was not fsynced (support/powerfs.py),
cut at aimed and random moments (support/powercut.py). CI runs a short campaign; the long
one is:

    TRANSCRIBED_POWERCUT_SEEDS=11,22,33 TRANSCRIBED_POWERCUT_RECORDINGS=100 \\
        TRANSCRIBED_POWERCUT_CUTS=70 python -m pytest tests/test_powercut.py -s -k campaign

(each seed a campaign of its own; the figures print at the end of each), and with the
archive on a disk of its own, TRANSCRIBED_POWERCUT_LAYOUTS=archive-apart.
"""

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Folders
from invariants import digest
from recordings import write_soundfile
from running import Daemon
from support.powercut import Campaign
from support.powerfs import PowerFS, require_powerfs
from transcribed.files.durable import fsync_dir
from transcribed.files.names import REASON_SUFFIX

pytestmark = [pytest.mark.slow, pytest.mark.timeout(6 * 3600)]  # the long form takes hours

SEEDS = [int(seed) for seed in os.environ.get("TRANSCRIBED_POWERCUT_SEEDS", "20261206").split(",")]
RECORDINGS = int(os.environ.get("TRANSCRIBED_POWERCUT_RECORDINGS", "10"))
CUTS = int(os.environ.get("TRANSCRIBED_POWERCUT_CUTS", "6"))
# one-disk: every folder on one disk; archive-apart: the archive on a second one.
LAYOUTS = os.environ.get("TRANSCRIBED_POWERCUT_LAYOUTS", "one-disk").split(",")


# The disk is FUSE, whose writers the daemon treats as unseen; the tests copy carefully.
_QUICK = {"TRANSCRIBED_SETTLE_SECONDS": "0.3", "TRANSCRIBED_SETTLE_SECONDS_UNSEEN": "0.3"}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerFS]:
    require_powerfs()
    with PowerFS(tmp_path / "disk") as mounted:
        yield mounted


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_a_campaign_of_power_cuts_loses_nothing_and_doubles_nothing(
    seed: int, layout: str, disk: PowerFS, tiny_model: Path, tmp_path: Path
) -> None:
    """Drops and power cuts aimed at claims, publishes, disposals, commits and copies: after
    every cut and at the end nothing lost, doubled or stranded, `status` true to the disk.
    `archive-apart`: the archive on a second disk, so originals are copied, not linked."""
    with contextlib.ExitStack() as stack:
        archive_disk = None
        if layout == "archive-apart":
            archive_disk = stack.enter_context(PowerFS(tmp_path / "archive disk"))
        campaign = Campaign(disk, tiny_model, tmp_path / "campaign", seed, archive_disk)
        tally = campaign.run(RECORDINGS, CUTS)
        campaign.check_final()
    print(f"power-cut seed {seed}, {layout}: {tally.line()}")


def _careful_copy(source: Path, target: Path) -> None:
    """As a sync tool copies: a hidden temp, fsynced, renamed, its folder fsynced."""
    temp = target.with_name(f".{target.name}.copying")
    temp.write_bytes(source.read_bytes())
    fd = os.open(temp, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    temp.rename(target)
    fsync_dir(target.parent)


def _folders_on(disk: PowerFS, *subfolders: str) -> Folders:
    folders = Folders(*(disk.root / n for n in ("inbox", "outbox", "archive", "failed", "state")))
    for folder in vars(folders).values():
        folder.mkdir()
    for subfolder in subfolders:
        (folders.inbox / subfolder).mkdir()
    disk.sync()  # the folders were there long before the daemon
    return folders


def test_a_recording_claimed_from_a_subfolder_survives_a_cut_on_the_first_day(
    disk: PowerFS, tiny_model: Path, tmp_path: Path
) -> None:
    """The work folder made at the first start is durable before anything is claimed into
    it: a cut right after a claim from inbox/team/ (both folders fsynced) loses nothing."""
    folders = _folders_on(disk, "team")
    env = folders.env(tiny_model, **_QUICK)
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(120)
        recording = write_soundfile(tmp_path / "a.wav", 1.0, 16000, "PCM_16")
        disk.arm("fsyncdir", r"^inbox/team$", 2)  # the copier's fsync, then the claim's
        _careful_copy(recording, folders.inbox / "team" / "a.wav")
        assert disk.wait_fired(30), daemon.tail()
        disk.reboot()
        daemon.process.wait(10)
        copies = [p for p in folders.inbox.rglob("*") if p.is_file()]
        assert digest(recording) in map(digest, copies), "the claimed recording is gone"
        daemon = Daemon(env, tmp_path / "daemon.log")
        daemon.wait_ready(120)
        daemon.wait_for(lambda: (folders.archive / "team" / "a.wav").exists(), 120)
        assert (folders.outbox / "team" / "a.json").exists()
    finally:
        daemon.stop()


def test_a_state_folder_the_daemon_made_survives_a_cut(
    disk: PowerFS, tiny_model: Path, tmp_path: Path
) -> None:
    """The state folder made at the first start (with its job database) is durable: after a
    cut right after a claim, the job is still in the database, not rebuilt from the disk."""
    folders = _folders_on(disk)
    folders.state.rmdir()
    disk.sync()
    folders.state = disk.root / "var" / "transcribed"  # made by the daemon, parents too
    env = folders.env(tiny_model, **_QUICK)
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(120)
        recording = write_soundfile(tmp_path / "a.wav", 1.0, 16000, "PCM_16")
        disk.arm("fsync", r"^var/transcribed/jobs\.sqlite3-wal$", 3)  # the claim's commits
        _careful_copy(recording, folders.inbox / "a.wav")
        assert disk.wait_fired(30), daemon.tail()
        disk.reboot()
        daemon.process.wait(10)
        assert (folders.state / "jobs.sqlite3").exists(), "the job database vanished"
    finally:
        daemon.stop()


def test_a_quarantine_cut_short_keeps_its_reason(
    disk: PowerFS, tiny_model: Path, tmp_path: Path
) -> None:
    """A cut after a not-audio file was moved into the failed folder, before its job was
    recorded as failed: after the restart its reason still says why it failed."""
    folders = _folders_on(disk)
    env = folders.env(tiny_model, **_QUICK)
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready(120)
        notes = tmp_path / "notes.mp3"
        notes.write_text("minutes of the meeting, not audio\n" * 50)
        disk.arm("fsyncdir", r"^inbox/\.transcribed-work$", 2)  # the claim's, the quarantine's
        _careful_copy(notes, folders.inbox / "notes.mp3")
        assert disk.wait_fired(60), daemon.tail()
        disk.reboot()
        daemon.process.wait(10)
        daemon = Daemon(env, tmp_path / "daemon.log")
        daemon.wait_ready(120)
        reason = folders.failed / f"notes.mp3{REASON_SUFFIX}"
        daemon.wait_for(reason.exists, 60)
        assert "not a readable audio file" in json.loads(reason.read_text())["error"]
    finally:
        daemon.stop()
