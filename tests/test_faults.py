"""Resource faults: full, read-only and failing disks. The job waits, the original stays
untouched, the log says what is wrong and what to do, and work resumes once it is fixed.

Disk full and read-only are real: small tmpfs mounts (needs root, as in CI; skipped
elsewhere). The kernel will not fail an fsync with EIO, or refuse root with EACCES, on
demand: those two are injected with the test-only switch, active while a file exists.
"""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.invariants import check_final, check_i1_i2, digest, visible_transcripts
from support.recordings import write_soundfile
from support.running import Daemon, events

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str = "4m") -> Iterator[Path]:
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of the filesystem holding `folder`."""
    filler = folder / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (1 << 16, 1):  # big writes, then byte by byte up to the last one
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(block))
    finally:
        os.close(fd)
    return filler


def _drop(inbox: Path, name: str, seed: int) -> str:
    path = write_soundfile(inbox / f".{name}", 1, 16000, "PCM_16", seed=seed)
    sha = digest(path)
    path.rename(inbox / name)
    return sha


def _hints(log: Path, event: str) -> list[str]:
    return [str(e.get("hint")) for e in events(log) if e["event"] == event]


def test_full_and_read_only_disks_make_jobs_wait_and_resume_by_themselves(
    folders, tiny_model, tmp_path
) -> None:
    with _tmpfs(tmp_path / "outbox-disk") as outbox, _tmpfs(tmp_path / "state-disk") as state:
        folders.outbox, folders.state = outbox, state
        env = folders.env(
            tiny_model, TRANSCRIBED_SETTLE_SECONDS="0.3", TRANSCRIBED_RETRY_SECONDS="0.3"
        )
        log = tmp_path / "daemon.log"
        daemon = Daemon(env, log)
        dropped: dict[str, str] = {}
        try:
            daemon.wait_ready()
            # 1. The outbox disk is full: the job waits, the original stays in the work folder.
            filler = _fill(outbox)
            dropped["full.wav"] = _drop(folders.inbox, "full.wav", 1)
            daemon.wait_for(lambda: "disk is full" in " ".join(_hints(log, "job.retry_later")), 30)
            check_i1_i2(folders, dropped)
            assert visible_transcripts(outbox) == {}
            filler.unlink()  # the operator frees space
            daemon.wait_for(lambda: (folders.archive / "full.wav").exists(), 30)

            # 2. The outbox is read-only.
            subprocess.run(["mount", "-o", "remount,ro", str(outbox)], check=True)
            dropped["read only.wav"] = _drop(folders.inbox, "read only.wav", 2)
            daemon.wait_for(lambda: "read-only" in " ".join(_hints(log, "job.retry_later")), 30)
            check_i1_i2(folders, dropped)
            subprocess.run(["mount", "-o", "remount,rw", str(outbox)], check=True)
            daemon.wait_for(lambda: (folders.archive / "read only.wav").exists(), 30)

            # 3. The state disk (job database) is full: nothing is claimed or lost meanwhile.
            filler = _fill(state)
            dropped["db full.wav"] = _drop(folders.inbox, "db full.wav", 3)
            daemon.wait_for(lambda: _hints(log, "intake.cannot_record"), 30)
            check_i1_i2(folders, dropped)
            filler.unlink()
            daemon.wait_for(lambda: (folders.archive / "db full.wav").exists(), 60)
        finally:
            assert daemon.stop() == 0
        check_final(folders, dropped)
        assert "job database cannot be written" in _hints(log, "intake.cannot_record")[0]


@pytest.mark.parametrize(
    ("rule", "hint"),
    [
        ("outbox.json.written=EIO", "I/O error"),  # the fsync after writing fails
        ("outbox.txt.written=EIO", "I/O error"),
        ("outbox.json.written=EACCES", "permission denied"),
        ("disposal.linking=EACCES", "permission denied"),  # the archive refuses the original
    ],
)
def test_an_injected_io_error_is_never_counted_as_success(
    rule: str, hint: str, folders, tiny_model, tmp_path
) -> None:
    switch = tmp_path / "disk-is-broken"
    switch.touch()
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_RETRY_SECONDS="0.3",
        TRANSCRIBED_TEST_FAULTS=rule,
        TRANSCRIBED_TEST_FAULT_SWITCH=str(switch),
    )
    log = tmp_path / "daemon.log"
    daemon = Daemon(env, log)
    try:
        daemon.wait_ready()
        dropped = {"take.wav": _drop(folders.inbox, "take.wav", 4)}
        event = "job.disposal_failed" if rule.startswith("disposal") else "job.retry_later"
        daemon.wait_for(lambda: len(_hints(log, event)) >= 3, 30)  # retried, still failing
        check_i1_i2(folders, dropped)
        if event == "job.retry_later":
            assert visible_transcripts(folders.outbox) == {}, "no transcript from a failed fsync"
        assert not (folders.archive / "take.wav").exists()
        switch.unlink()  # repaired
        daemon.wait_for(lambda: (folders.archive / "take.wav").exists(), 30)
    finally:
        assert daemon.stop() == 0
    check_final(folders, dropped)
    assert hint in _hints(log, event)[0]
