"""Intake with real files and a real observer: settle, claim safely, never follow links."""

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import structlog.testing

from recordings import write_soundfile
from support.powerfs import PowerFS, require_powerfs
from transcribed.intake import claim as intake_module
from transcribed.intake.claim import Intake, recover_claims
from transcribed.intake.watcher import start_observer
from transcribed.state.queue import JobQueue, JobState
from transcribed.state.workfolder import WorkFolder


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _intake(inbox: Path, state: Path, clock: Clock, **options: object) -> Intake:
    work = WorkFolder(inbox)
    work.open()
    return Intake(
        inbox=inbox,
        work=work,
        jobs=JobQueue(state / "q.db"),
        arrivals=queue.SimpleQueue(),
        settle_seconds=2,
        rescan_seconds=300,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )


def _settle(intake: Intake, clock: Clock) -> int:
    claimed = intake.step()
    clock.now += 2
    return claimed + intake.step()


def test_rescan_claims_settled_files_into_the_work_folder(folders) -> None:
    (folders.inbox / "team" / "a").mkdir(parents=True)
    (folders.inbox / "team" / "a" / "one.wav").write_bytes(b"RIFF1")
    (folders.inbox / "two.mp3").write_bytes(b"ID3-2")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 2
    jobs = intake.jobs.in_state(JobState.QUEUED)
    assert sorted(job.relpath for job in jobs) == [b"team/a/one.wav", b"two.mp3"]
    assert not (folders.inbox / "two.mp3").exists()
    for job in jobs:
        assert (folders.inbox / ".transcribed-work" / job.work_name).is_file()


def test_a_file_still_growing_is_not_claimed(folders) -> None:
    path = folders.inbox / "rec.wav"
    path.write_bytes(b"x")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    for _ in range(4):
        intake.step()
        with path.open("ab") as handle:
            handle.write(b"more")
        clock.now += 1.5
    assert intake.step() == 0 and path.exists()
    clock.now += 2
    assert intake.step() == 1


def test_symlinks_fifos_hardlinks_and_folders_are_refused_untouched(folders, tmp_path) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"outside the inbox")
    before = outside.stat()
    (folders.inbox / "link.wav").symlink_to(outside)
    os.mkfifo(folders.inbox / "pipe.wav")
    (folders.inbox / "hard.wav").write_bytes(b"two names")
    os.link(folders.inbox / "hard.wav", tmp_path / "other-name.wav")
    (folders.inbox / "dir.wav").mkdir()
    (folders.inbox / "linked-dir").symlink_to(tmp_path)
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 0
    assert intake.jobs.counts() == {}
    assert (folders.inbox / "link.wav").is_symlink()
    assert (folders.inbox / "pipe.wav").exists() and (folders.inbox / "hard.wav").exists()
    after = outside.stat()
    assert (after.st_mtime_ns, after.st_mode, outside.read_bytes()) == (
        before.st_mtime_ns,
        before.st_mode,
        b"outside the inbox",
    )


def test_identical_content_under_two_names_is_queued_twice_and_the_same_name_once(
    folders,
) -> None:
    """Each name gets its own transcript (the worker runs the model once); the same name
    with the same content dropped again adds nothing."""
    for name in ("a.wav", "copy of a.wav"):
        (folders.inbox / name).write_bytes(b"same recording")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 2
    (folders.inbox / "a.wav").write_bytes(b"same recording")
    intake.rescan()
    assert _settle(intake, clock) == 1
    assert intake.jobs.counts() == {"queued": 2, "duplicate": 1}


def test_a_claim_interrupted_after_the_rename_is_finished_at_start(folders, work) -> None:
    jobs = JobQueue(folders.state / "q.db")
    moved = jobs.begin_claim(b"moved.wav", "m.wav")
    (work.path / "m.wav").write_bytes(b"content")
    never_moved = jobs.begin_claim(b"stayed.wav", "s.wav")
    assert recover_claims(jobs, work) == 1
    assert jobs.get(moved).state == JobState.QUEUED and jobs.get(moved).size == 7
    with pytest.raises(KeyError):
        jobs.get(never_moved)


@pytest.mark.parametrize("mode", ["events", "poll"])
def test_real_observer_reports_files_written_renamed_in_and_moved_from_outside(
    folders, tmp_path, mode
) -> None:
    arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer = start_observer(folders.inbox, arrivals, mode, poll_seconds=0.2)
    try:
        (folders.inbox / "written.wav").write_bytes(b"a")
        (folders.inbox / ".upload.tmp").write_bytes(b"b")
        (folders.inbox / ".upload.tmp").rename(folders.inbox / "renamed.wav")
        (tmp_path / "outside.flac").write_bytes(b"c")
        shutil.move(tmp_path / "outside.flac", folders.inbox / "moved.flac")
        (folders.inbox / "ignored.txt").write_bytes(b"d")
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while seen != {"written.wav", "renamed.wav", "moved.flac"} and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.add(arrivals.get(timeout=0.2))
        assert seen == {"written.wav", "renamed.wav", "moved.flac"}
    finally:
        observer.stop()
        observer.join()


def test_intake_thread_survives_and_stops_on_request(folders) -> None:
    intake = _intake(folders.inbox, folders.state, Clock())
    stop = threading.Event()
    thread = threading.Thread(target=intake.run, args=(stop, 0.01))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_claim_that_fails_leaves_no_row_and_is_tried_again(folders) -> None:
    """Finding 11: a subfolder the daemon cannot take files out of left one `claiming` row per
    rescan (~720 a day), counted as queued."""
    locked = folders.inbox / "locked"
    locked.mkdir()
    (locked / "a.wav").write_bytes(b"RIFF-ish recording")
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem (needed to deny root)")
    try:
        clock = Clock()
        intake = _intake(folders.inbox, folders.state, clock)
        for _ in range(3):
            intake.rescan()
            assert _settle(intake, clock) == 0
        assert intake.jobs.counts() == {}
        [(relpath, reason, _since)] = intake.jobs.waiting()
        assert relpath == b"locked/a.wav" and "cannot be claimed" in reason
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    intake.rescan()
    assert _settle(intake, clock) == 1
    assert intake.jobs.waiting() == []


def _unfinished_wav(path: Path) -> Path:
    """A recorder that crashed: the header promises more audio than the file holds."""
    write_soundfile(path, 4, 16000, "PCM_16")
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    return path


def test_an_unfinished_file_waits_visibly_and_is_taken_once_stalled(folders) -> None:
    """Finding 12: it was logged once and then waited forever, unseen."""
    _unfinished_wav(folders.inbox / "crashed.wav")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock, stalled_seconds=3600)
    intake.rescan()
    assert _settle(intake, clock) == 0
    [(relpath, reason, _since)] = intake.jobs.waiting()
    assert relpath == b"crashed.wav" and "truncated" in reason
    clock.now += 1800
    intake.rescan()
    assert _settle(intake, clock) == 0  # unchanged, but not for long enough yet
    clock.now += 1800
    intake.rescan()
    assert _settle(intake, clock) == 1
    [job] = intake.jobs.in_state(JobState.QUEUED)
    assert "truncated" in (job.incomplete or "")
    assert intake.jobs.waiting() == []


def test_hashing_a_huge_file_does_not_hold_up_the_others(folders, monkeypatch) -> None:
    """Finding 15: a 20 GB file blocked intake for over a minute. Here the big file's
    hashing is held until the small file has been claimed."""
    big = folders.inbox / "big.mka"
    with big.open("wb") as handle:
        handle.write(os.urandom(4096))
        handle.truncate(intake_module.LARGE_FILE_BYTES + 1)  # sparse: quick to make
    (folders.inbox / "small.wav").write_bytes(b"RIFF small")
    release = threading.Event()
    real_hash = intake_module.hash_descriptor

    def held_for_big_files(fd: int, *args: object) -> tuple[str, int]:
        if os.fstat(fd).st_size > intake_module.LARGE_FILE_BYTES:
            release.wait(30)
        return real_hash(fd, *args)

    monkeypatch.setattr(intake_module, "hash_descriptor", held_for_big_files)
    stop = threading.Event()
    work = WorkFolder(folders.inbox)
    work.open()
    hasher = intake_module.LargeFileHasher(folders.state / "q.db", work, stop)
    intake = Intake(
        inbox=folders.inbox,
        work=work,
        jobs=JobQueue(folders.state / "q.db"),
        arrivals=queue.SimpleQueue(),
        settle_seconds=0.1,
        rescan_seconds=300,
        hasher=hasher,
    )
    threads = [
        threading.Thread(target=hasher.run),
        threading.Thread(target=intake.run, args=(stop, 0.05)),
    ]
    intake.rescan()
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while not intake.jobs.in_state(JobState.QUEUED) and time.monotonic() < deadline:
            time.sleep(0.05)
        [small] = intake.jobs.in_state(JobState.QUEUED)
        assert small.relpath == b"small.wav"
        assert [job.relpath for job in intake.jobs.in_state(JobState.CLAIMING)] == [b"big.mka"]
        release.set()
        while len(intake.jobs.in_state(JobState.QUEUED)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(intake.jobs.in_state(JobState.QUEUED)) == 2
    finally:
        release.set()
        stop.set()
        for thread in threads:
            thread.join(10)


def test_a_large_file_whose_hash_fails_once_is_hashed_again(folders, monkeypatch) -> None:
    """Found in review: one I/O error while hashing left the claim `claiming` until the
    next start, the recording untranscribed while the daemon looked healthy."""
    monkeypatch.setattr(intake_module, "LARGE_FILE_BYTES", 100)
    (folders.inbox / "big.wav").write_bytes(b"RIFF" + os.urandom(4096))
    real_hash = intake_module.hash_descriptor
    failures = iter([OSError(5, "Input/output error")])

    def fails_once(fd: int, *args: object) -> tuple[str, int]:
        if (error := next(failures, None)) is not None:
            raise error
        return real_hash(fd, *args)

    monkeypatch.setattr(intake_module, "hash_descriptor", fails_once)
    stop = threading.Event()
    work = WorkFolder(folders.inbox)
    work.open()
    hasher = intake_module.LargeFileHasher(folders.state / "q.db", work, stop)
    jobs = JobQueue(folders.state / "q.db")
    intake = Intake(
        inbox=folders.inbox,
        work=work,
        jobs=jobs,
        arrivals=queue.SimpleQueue(),
        settle_seconds=0.1,
        rescan_seconds=300,
        hasher=hasher,
    )
    threads = [
        threading.Thread(target=hasher.run),
        threading.Thread(target=intake.run, args=(stop, 0.05)),
    ]
    intake.rescan()
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while not jobs.in_state(JobState.QUEUED) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [job.relpath for job in jobs.in_state(JobState.QUEUED)] == [b"big.wav"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        work.close()


def test_a_claim_that_keeps_failing_is_logged_once(folders) -> None:
    """Trust 2, finding 11: `intake.claim_failed` was logged on every rescan for the same
    file, its reason holding the random work name."""
    locked = folders.inbox / "locked"
    locked.mkdir()
    (locked / "a.wav").write_bytes(b"RIFF-ish recording")
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this filesystem (needed to deny root)")
    try:
        clock = Clock()
        intake = _intake(folders.inbox, folders.state, clock)
        with structlog.testing.capture_logs() as logged:
            for _ in range(3):
                intake.rescan()
                _settle(intake, clock)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert [e["event"] for e in logged].count("intake.claim_failed") == 1


def _deep_file(inbox: Path, name: str) -> str:
    """A recording below 25 folders of 200 bytes: a path of about 5,000 bytes, over PATH_MAX
    (made through descriptors, as nothing else can reach it)."""
    relative = "/".join(["d" * 200] * 25)
    folder_fd = os.open(inbox, os.O_RDONLY)
    for part in relative.split("/"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, dir_fd=folder_fd)
        child = os.open(part, os.O_RDONLY, dir_fd=folder_fd)
        os.close(folder_fd)
        folder_fd = child
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder_fd)
    os.write(fd, b"RIFF deep")
    os.close(fd)
    os.close(folder_fd)
    return f"{relative}/{name}"


def test_one_path_that_cannot_be_looked_at_stops_nothing_else(folders) -> None:
    """Trust 2, finding 4: a file whose path is over 4,096 bytes (or any error on one path:
    ELOOP, EIO, no permission) stopped every claim in the inbox until a restart, silently."""
    deep = _deep_file(folders.inbox, "deep.wav")
    (folders.inbox / "loop").symlink_to("loop")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.arrivals.put(deep)  # as inotify reports it
    intake.arrivals.put("loop/x.wav")  # an event for a path that cannot be looked at: ELOOP
    (folders.inbox / "first.wav").write_bytes(b"RIFF first")
    intake.arrivals.put("first.wav")
    assert _settle(intake, clock) == 2
    queued = sorted(job.relpath for job in intake.jobs.in_state(JobState.QUEUED))
    assert queued == sorted([deep.encode(), b"first.wav"])
    [(relpath, reason, _since)] = intake.jobs.waiting()
    assert relpath == b"loop/x.wav" and "Too many levels of symbolic links" in reason
    (folders.inbox / "second.wav").write_bytes(b"RIFF second")
    intake.arrivals.put("second.wav")
    assert _settle(intake, clock) == 1


def test_a_recording_deeper_than_path_max_is_found_by_a_rescan(folders) -> None:
    """Trust 2, finding 4: a rescan lists folders deeper than PATH_MAX too."""
    deep = _deep_file(folders.inbox, "deep.wav")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 1
    [job] = intake.jobs.in_state(JobState.QUEUED)
    assert job.relpath == deep.encode()
    assert intake.jobs.waiting() == []


def test_a_file_refused_for_a_reason_that_passes_is_taken_once_it_passes(folders) -> None:
    """Trust 2, finding 7: a file with a second hard link was never looked at again after the
    link went (the refusal was keyed on size, mtime and inode), and `status` did not show it."""
    recording = folders.inbox / "bad4.wav"
    recording.write_bytes(b"RIFF bad4")
    os.link(recording, folders.state / "other-name.wav")
    clock = Clock()
    intake = _intake(folders.inbox, folders.state, clock)
    intake.rescan()
    assert _settle(intake, clock) == 0
    [(relpath, reason, _since)] = intake.jobs.waiting()
    assert relpath == b"bad4.wav" and "2 hard links" in reason
    (folders.state / "other-name.wav").unlink()
    intake.rescan()
    assert _settle(intake, clock) == 1
    assert intake.jobs.waiting() == []


def test_a_hung_mount_inside_the_inbox_stops_no_claim(folders) -> None:
    """Found by the adversary (Trust 2): a network mount inside the inbox whose server went
    away (here: a FUSE disk whose server is stopped) held the rescan in a stat for as long
    as it hung: no file anywhere in the inbox was claimed, and status said nothing."""
    require_powerfs()
    stuck = folders.inbox / "stuck"
    with PowerFS(stuck) as disk:
        (stuck / "inner.wav").write_bytes(b"RIFF inner")
        os.kill(disk._server_pid(), signal.SIGSTOP)
        try:
            (folders.inbox / "after.wav").write_bytes(b"RIFF after")
            clock = Clock()
            intake = _intake(folders.inbox, folders.state, clock)
            claimed: list[int] = []

            def rescan_and_claim() -> None:
                intake.rescan()
                claimed.append(_settle(intake, clock))

            thread = threading.Thread(target=rescan_and_claim, daemon=True)
            thread.start()
            thread.join(20)
            assert claimed == [1], "the rescan hung on the mount"
            waiting = {relpath: reason for relpath, reason, _ in intake.jobs.waiting()}
            assert "mounted here" in waiting[b"stuck/"]
        finally:
            os.kill(disk._server_pid(), signal.SIGCONT)
