"""Move, delete, shred and quarantine: byte-identical, repeatable, never through a link."""

import json
import os
from pathlib import Path

import pytest

from transcribed.disposal import Disposer, shred
from transcribed.queue import Job, JobQueue


def _job(tmp_path: Path, relpath: bytes, content: bytes) -> tuple[JobQueue, Job, Path]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    jobs = JobQueue(tmp_path / "q.db")
    job_id = jobs.begin_claim(relpath, f"{relpath.hex()}.wav")
    (work / f"{relpath.hex()}.wav").write_bytes(content)
    jobs.finish_claim(job_id, "sha", len(content))
    return jobs, jobs.get(job_id), work


@pytest.mark.parametrize("policy", ["move", "delete", "shred"])
def test_each_policy_removes_the_work_file(tmp_path: Path, policy: str) -> None:
    jobs, job, work = _job(tmp_path, b"sub/a.wav", b"recording bytes")
    archive = tmp_path / "archive"
    archive.mkdir()
    disposer = Disposer(jobs, work, policy, archive, tmp_path)
    assert disposer.dispose(job) in ("moved", "deleted", "shredded")
    assert list(work.iterdir()) == []
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
    source = work / job.work_name
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
