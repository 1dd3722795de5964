"""Move, delete, shred and quarantine: byte-identical, repeatable, never through a link."""

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import hashed
from transcribed.disposal.disposer import Disposer, shred
from transcribed.errors import FolderUnusable, RecordingVanished
from transcribed.files.content import hash_file
from transcribed.state.queue import Job, JobQueue, JobState
from transcribed.state.recheck import RecordingChanged
from transcribed.state.workfolder import WorkFolder


def _job(tmp_path: Path, relpath: bytes, content: bytes) -> tuple[JobQueue, Job, WorkFolder]:
    work = WorkFolder(tmp_path / "inbox")
    work.inbox.mkdir(exist_ok=True)
    work.open()
    jobs = JobQueue(tmp_path / "q.db")
    job_id = jobs.begin_claim(relpath, f"{relpath.hex()}.wav")
    (work.path / f"{relpath.hex()}.wav").write_bytes(content)
    jobs.finish_claim(job_id, hashed(hashlib.sha256(content).hexdigest(), len(content)))
    return jobs, jobs.get(job_id), work


@pytest.mark.parametrize("policy", ["move", "delete", "shred"])
def test_each_policy_removes_the_work_file(tmp_path: Path, policy: str) -> None:
    jobs, job, work = _job(tmp_path, b"sub/a.wav", b"recording bytes")
    archive = tmp_path / "archive"
    archive.mkdir()
    disposer = Disposer(jobs, work, policy, archive, tmp_path)
    assert disposer.dispose(job) in ("moved", "deleted", "shredded")
    assert work.names() == []
    if policy == "move":
        assert (archive / "sub/a.wav").read_bytes() == b"recording bytes"
    else:
        assert list(archive.iterdir()) == []


def test_a_move_repeated_after_a_crash_does_not_duplicate(tmp_path: Path) -> None:
    jobs, job, work = _job(tmp_path, b"a.wav", b"data")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.wav").write_bytes(b"an older, different recording")
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    source = work.file(job.work_name)
    os.link(source, tmp_path / "keep")  # simulate: crash after linking, before unlinking
    disposer._jobs.record_disposal_target(job.id, str(archive / "a-2.wav"))
    os.link(source, archive / "a-2.wav")
    os.unlink(tmp_path / "keep")
    disposer.dispose(jobs.get(job.id))
    assert sorted(p.name for p in archive.iterdir()) == ["a-2.wav", "a.wav"]
    assert (archive / "a.wav").read_bytes() == b"an older, different recording"


def test_quarantine_keeps_the_file_and_writes_the_reason(tmp_path: Path) -> None:
    jobs, job, work = _job(tmp_path, b"x/notes.mp3", b"not audio")
    failed = tmp_path / "failed"
    failed.mkdir()
    target = Disposer(jobs, work, "shred", None, failed).quarantine(job, "not audio")
    assert target == failed / "x/notes.mp3" and target.read_bytes() == b"not audio"
    report = json.loads((failed / "x/notes.mp3.error.json").read_text())
    assert report["error"] == "not audio" and report.keys() == {"error", "attempts", "time"}


def test_shred_overwrites_through_the_descriptor_and_refuses_links(tmp_path: Path) -> None:
    target = tmp_path / "outside.wav"
    target.write_bytes(b"keep me")
    (tmp_path / "link.wav").symlink_to(target)
    with pytest.raises(OSError):
        shred(tmp_path / "link.wav")
    os.link(target, tmp_path / "second-name.wav")
    with pytest.raises(OSError, match="single-link"):
        shred(target)
    assert target.read_bytes() == b"keep me"
    (tmp_path / "second-name.wav").unlink()
    shred(target)
    assert not target.exists()


@pytest.mark.parametrize("policy", ["move", "delete", "shred"])
def test_a_work_file_missing_is_never_taken_for_disposed(tmp_path: Path, policy: str) -> None:
    """Finding 2: the original is not in the work folder (the inbox was renamed or cleaned):
    no disposal was verified, so the job must not become done or count as erased."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    (tmp_path / "archive").mkdir()
    work.file(job.work_name).rename(tmp_path / "elsewhere.wav")
    disposer = Disposer(jobs, work, policy, tmp_path / "archive", tmp_path)
    with pytest.raises(RecordingVanished, match="vanished"):
        disposer.dispose(jobs.get(job.id))


def test_while_the_inbox_is_gone_nothing_is_disposed(tmp_path: Path) -> None:
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    (tmp_path / "archive").mkdir()
    disposer = Disposer(jobs, work, "delete", tmp_path / "archive", tmp_path)
    work.inbox.rename(tmp_path / "inbox.old")
    with pytest.raises(OSError, match=r"inbox .* is gone"):
        disposer.dispose(job)
    assert (tmp_path / "inbox.old/.transcribed-work" / job.work_name).read_bytes() == b"recording"


def test_a_disposal_a_crash_cut_short_is_verified_before_it_counts(tmp_path: Path) -> None:
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    archive = tmp_path / "archive"
    archive.mkdir()
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    jobs.record_disposal_target(job.id, str(archive / "a.wav"))
    os.link(work.file(job.work_name), archive / "a.wav")
    work.file(job.work_name).unlink()  # crash after the unlink, before the job was done
    assert disposer.dispose(jobs.get(job.id)) == "already-disposed"
    (archive / "a.wav").write_bytes(b"something else")  # the copy is not the recording
    with pytest.raises(RecordingVanished):
        disposer.dispose(jobs.get(job.id))


def test_an_archive_swapped_for_a_link_into_the_inbox_is_refused(tmp_path: Path) -> None:
    """Finding 14: the original would be claimed again from the inbox, endlessly."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    (work.inbox / "sub").mkdir()
    archive = tmp_path / "archive"
    archive.symlink_to(work.inbox / "sub")
    with pytest.raises(OSError, match="leads into the inbox"):
        Disposer(jobs, work, "move", archive, tmp_path).dispose(job)
    assert list((work.inbox / "sub").iterdir()) == []
    assert work.file(job.work_name).read_bytes() == b"recording"


def test_the_same_recording_dropped_twice_is_archived_twice_even_with_the_archive_away(
    tmp_path: Path,
) -> None:
    """Found by the chaos campaign: with the archive briefly gone, the second drop's move
    chose the name the first one held, and on its return took that file for its own: one
    archived copy for two drops."""
    jobs, first, work = _job(tmp_path, b"a.wav", b"recording")
    archive = tmp_path / "archive"
    archive.mkdir()
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    assert disposer.dispose(first) == "moved"
    second_id = jobs.begin_claim(b"a.wav", "again.wav")
    work.file("again.wav").write_bytes(b"recording")
    second = jobs.finish_claim(second_id, hashed(first.sha256 or "", len(b"recording")))
    archive.rename(tmp_path / "aside")
    with pytest.raises(OSError, match="missing"):
        disposer.dispose(second)
    (tmp_path / "aside").rename(archive)
    assert disposer.dispose(jobs.get(second.id)) == "moved"
    assert sorted(p.name for p in archive.iterdir()) == ["a (copy 2).wav", "a.wav"]


def test_a_recorded_target_holding_another_drops_bytes_is_not_taken_for_ours(
    tmp_path: Path,
) -> None:
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.wav").write_bytes(b"recording")  # the same bytes, another drop's file
    jobs.record_disposal_target(job.id, str(archive / "a.wav"))
    assert Disposer(jobs, work, "move", archive, tmp_path).dispose(jobs.get(job.id)) == "moved"
    assert sorted(p.name for p in archive.iterdir()) == ["a-2.wav", "a.wav"]


@pytest.mark.parametrize("writers_seen", [True, False])
def test_an_original_whose_writers_cannot_be_seen_is_kept_a_while_after_its_claim(
    tmp_path: Path, monkeypatch, writers_seen: bool
) -> None:
    """Found by the adversary (Trust 2): claimed after settle_seconds_unseen, published from a
    stored result and deleted 10 ms later, a recording whose writer had only paused lost what
    it wrote next. Where writers cannot be seen, the original stays settle_seconds_unseen
    after its claim, so a writer that resumes is seen before anything is disposed of."""
    import transcribed.state.recheck as recheck

    jobs, job, work = _job(tmp_path, b"tr.wav", b"recording bytes")
    if not writers_seen:  # as on a network or FUSE mount, or another user's file
        monkeypatch.setattr(recheck, "open_for_writing", lambda fd: None)
    disposer = Disposer(jobs, work, "delete", None, tmp_path, hold_unseen=60)
    if writers_seen:
        assert disposer.dispose(job) == "deleted"
        return
    with pytest.raises(recheck.StillBeingWritten, match="settle_seconds_unseen"):
        disposer.dispose(job)
    assert work.names() != []
    assert disposer.dispose(_claimed_earlier(job, 61)) == "deleted"


def _claimed_earlier(job: Job, seconds: float, *, wall: float | None = None) -> Job:
    """`job` as if claimed `seconds` earlier on the boot clock, and `wall` seconds earlier
    on the wall clock (the same unless the time was set meanwhile)."""
    assert job.claimed_uptime is not None, "claims record the boot clock on Linux"
    return dataclasses.replace(
        job,
        created=job.created - (seconds if wall is None else wall),
        claimed_uptime=job.claimed_uptime - seconds,
    )


def test_a_claim_made_while_the_clock_was_far_ahead_is_not_held_until_it_catches_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the adversary: where writers cannot be seen, an original claimed while the
    clock was a day ahead waited for the clock to catch up (a day) before its disposal."""
    import transcribed.state.recheck as recheck

    jobs, job, work = _job(tmp_path, b"tr.wav", b"recording bytes")
    monkeypatch.setattr(recheck, "open_for_writing", lambda fd: None)
    disposer = Disposer(jobs, work, "delete", None, tmp_path, hold_unseen=60)
    with pytest.raises(recheck.StillBeingWritten):  # a minute ahead: held, as ever
        disposer.dispose(_claimed_earlier(job, 61, wall=-60))
    assert disposer.dispose(_claimed_earlier(job, 61, wall=-86400)) == "deleted"


def test_the_wall_clock_set_forward_after_a_claim_does_not_cut_the_hold_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adversary's finding: a machine without a battery-backed clock (a Raspberry Pi)
    claims a file, then NTP sets the time an hour forward: on the wall clock alone the hold
    for a paused writer that cannot be seen was over at once. The boot clock still holds it;
    a claim from another boot falls back to the wall clock."""
    import transcribed.state.recheck as recheck

    jobs, job, work = _job(tmp_path, b"tr.wav", b"recording bytes")
    monkeypatch.setattr(recheck, "open_for_writing", lambda fd: None)
    disposer = Disposer(jobs, work, "delete", None, tmp_path, hold_unseen=60)
    stepped = _claimed_earlier(job, 5, wall=3600 + 5)
    with pytest.raises(recheck.StillBeingWritten, match="settle_seconds_unseen"):
        disposer.dispose(stepped)
    assert work.names() != []
    assert disposer.dispose(dataclasses.replace(stepped, claimed_boot="another boot"))
    assert work.names() == []


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: what denies even root a write or an unlink (the tests run as root)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("policy", ["delete", "shred"])
def test_a_disposal_that_failed_before_it_began_compares_the_recording_again(
    tmp_path: Path, policy: str
) -> None:
    """Found by the adversary: a shred whose file could not be opened (or a delete whose
    unlink failed) was taken for begun, and the next try shredded without comparing: bytes a
    writer added meanwhile were shredded with no transcript."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"the first seconds")
    disposer = Disposer(jobs, work, policy, None, tmp_path)
    source = work.file(job.work_name)
    with _immutable(source if policy == "shred" else work.path), pytest.raises(OSError):
        disposer.dispose(jobs.get(job.id))
    with source.open("ab") as writer:  # the writer goes on, then the file can be disposed of
        writer.write(b" and the rest, never transcribed")
    with pytest.raises(RecordingChanged):
        disposer.dispose(jobs.get(job.id))
    assert source.read_bytes() == b"the first seconds and the rest, never transcribed"


@pytest.mark.parametrize("policy", ["delete", "shred"])
def test_a_recording_taken_away_after_a_failed_disposal_is_not_called_erased(
    tmp_path: Path, policy: str
) -> None:
    """Found by the adversary: after a shred that could not open the file, someone moved it
    out; the job became done as `already-disposed`, its JSON saying "overwritten"."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    disposer = Disposer(jobs, work, policy, None, tmp_path)
    source = work.file(job.work_name)
    with _immutable(source if policy == "shred" else work.path), pytest.raises(OSError):
        disposer.dispose(jobs.get(job.id))
    source.rename(tmp_path / "rescued.wav")
    with pytest.raises(RecordingVanished):
        disposer.dispose(jobs.get(job.id))


def test_a_move_without_an_archive_any_more_waits_with_its_reason(tmp_path: Path) -> None:
    """Found by the adversary: published under `move`, then a reload to `delete` dropped
    archive_dir; an assertion stopped the whole disposal sweep. Now that job waits, said."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    disposer = Disposer(jobs, work, "move", None, tmp_path)
    with pytest.raises(FolderUnusable, match="archive_dir is no longer set"):
        disposer.dispose(job)
    assert work.file(job.work_name).read_bytes() == b"recording"


def test_shred_says_a_file_is_immutable_rather_than_blame_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "ours.wav"
    path.write_bytes(b"recording")
    with _immutable(path), pytest.raises(PermissionError, match="read-only or immutable"):
        shred(path)
    assert path.read_bytes() == b"recording"


def test_an_original_is_never_moved_through_a_link_below_the_archive(tmp_path: Path) -> None:
    """Found by the adversary (I3): `archive/evil` a link to another folder; the original of
    inbox/evil/q.wav was archived there. Now it waits in the work folder, the reason said."""
    jobs, job, work = _job(tmp_path, b"evil/q.wav", b"recording")
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    archive.mkdir()
    elsewhere.mkdir()
    (archive / "evil").symlink_to(elsewhere)
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    with pytest.raises(FolderUnusable, match="symbolic link"):
        disposer.dispose(job)
    assert list(elsewhere.iterdir()) == []
    assert work.file(job.work_name).read_bytes() == b"recording"


def test_a_move_that_made_nothing_leaves_no_start_for_a_later_shred(tmp_path: Path) -> None:
    """Found by the adversary: a move refused by the archive (immutable) had recorded its
    start; the recording then changed, was published again under `shred`, and the shred took
    that stale start for its own: the newest bytes were shredded without a comparison."""
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    archive = tmp_path / "archive"
    archive.mkdir()
    with _immutable(archive), pytest.raises(OSError):
        Disposer(jobs, work, "move", archive, tmp_path).dispose(job)
    assert jobs.get(job.id).disposal_started is None, "nothing was made: nothing began"
    # A move that did begin (a crash after its link), then the recording changed: the new
    # version starts with no disposal begun, and a shred compares it before every try.
    jobs.record_disposal_target(job.id, str(archive / "a.wav"))
    jobs.record_disposal_start(job.id)
    source = work.file(job.work_name)
    source.write_bytes(b"recording, and more")
    jobs.new_version(job.id, hash_file(source), delay=0)
    assert jobs.get(job.id).disposal_started is None
    source.write_bytes(b"recording, and more, and the rest")
    with pytest.raises(RecordingChanged):
        Disposer(jobs, work, "shred", None, tmp_path).dispose(jobs.get(job.id))


def test_a_shred_never_takes_a_moves_start_for_its_own(tmp_path: Path) -> None:
    jobs, job, work = _job(tmp_path, b"a.wav", b"recording")
    jobs.record_disposal_target(job.id, str(tmp_path / "archive" / "a.wav"))
    jobs.record_disposal_start(job.id)
    work.file(job.work_name).write_bytes(b"recording, and more")
    with pytest.raises(RecordingChanged):
        Disposer(jobs, work, "shred", None, tmp_path).dispose(jobs.get(job.id))


def test_an_archived_original_takes_its_transcripts_number_when_it_can(tmp_path: Path) -> None:
    """An adversary's finding: x.wav dropped again was transcribed as x-3.json but archived
    as x-2.wav (each folder gave its first free number). The archive now takes the
    transcript's name where it is free, and the first free name where it is not."""
    archive = tmp_path / "archive"
    archive.mkdir()
    jobs, job, work = _job(tmp_path, b"team/x.wav", b"third take")
    (archive / "team").mkdir()
    (archive / "team" / "x.wav").write_bytes(b"earlier")  # x-2.wav was deleted by hand
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    numbered = dataclasses.replace(job, outputs=("/out/team/x-3.json", "/out/team/x-3.txt"))
    assert disposer.dispose(numbered) == "moved"
    assert (archive / "team" / "x-3.wav").read_bytes() == b"third take"

    (tmp_path / "again").mkdir()
    jobs, job, work = _job(tmp_path / "again", b"team/x.wav", b"fourth take")
    (archive / "team" / "x-4.wav").write_bytes(b"someone else's")
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    assert disposer.dispose(dataclasses.replace(job, outputs=("/out/team/x-4.json",))) == "moved"
    assert (archive / "team" / "x-2.wav").read_bytes() == b"fourth take"
    assert (archive / "team" / "x-4.wav").read_bytes() == b"someone else's"


def test_the_same_recording_dropped_again_is_archived_outside_the_transcripts_numbers(
    tmp_path: Path,
) -> None:
    """An adversary's finding: X, Y, X again, Z dropped as r.wav: the second X (a duplicate,
    whose transcript is r.json) was archived as r-3.wav, and Z's transcript r-3.json then
    sat beside another recording's original. A duplicate's copy is `r (copy 2).wav`."""
    archive = tmp_path / "archive"
    archive.mkdir()
    jobs, first, work = _job(tmp_path, b"r.wav", b"take X")
    disposer = Disposer(jobs, work, "move", archive, tmp_path)
    assert disposer.dispose(dataclasses.replace(first, outputs=("/out/r.json",))) == "moved"
    again_id = jobs.begin_claim(b"r.wav", "again.wav")
    work.file("again.wav").write_bytes(b"take X")
    again = jobs.finish_claim(again_id, hashed(first.sha256 or "", len(b"take X")))
    assert again.state == JobState.DUPLICATE
    assert disposer.dispose(again) == "moved"
    assert sorted(p.name for p in archive.iterdir()) == ["r (copy 2).wav", "r.wav"]
