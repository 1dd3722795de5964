"""The disk against the job database (I5): strays claimed again, lost recordings made due,
the work folder's names carrying their inbox paths, and doctor saying what it finds."""

import hashlib
import os
import time

import pytest

from conftest import hashed
from transcribed.commands import doctor
from transcribed.intake.reconcile import Reconciler
from transcribed.settings import Settings
from transcribed.state.queue import JobQueue, JobState
from transcribed.state.workfolder import WorkFolder, relpath_of, work_name


@pytest.mark.parametrize(
    "relpath",
    [
        "a.wav",
        "team/zh/会议 记录.flac",
        os.fsdecode(b"bad\xff\nname%2F.wav"),
        "-leading.wav",
        "x/" * 100 + "deep.wav",  # longer than a name once escaped: keeps the file name
    ],
)
def test_a_work_file_name_carries_its_inbox_path(relpath: str) -> None:
    name = work_name(relpath)
    assert len(os.fsencode(name)) <= 255 and "/" not in name
    name.encode("utf-8")  # SQLite stores it as text: no surrogates
    expected = relpath if len(relpath) < 200 else os.path.basename(relpath)
    assert relpath_of(name) == expected


def test_strays_in_the_work_folder_are_claimed_again_under_their_inbox_path(folders, work) -> None:
    """A lost database left claimed recordings in the work folder, owned by nobody."""
    jobs = JobQueue(folders.state / "q.db")
    stray = work.file(work_name("team/notes.wav"))
    stray.write_bytes(b"a recording")
    legacy = work.file("0123456789abcdef0123456789abcdef.wav")  # named before paths were kept
    legacy.write_bytes(b"another")
    assert Reconciler(jobs, work).run() == (2, 0)
    queued = {job.relpath: job for job in jobs.in_state(JobState.QUEUED)}
    assert set(queued) == {b"team/notes.wav", b"0123456789abcdef0123456789abcdef.wav"}
    assert queued[b"team/notes.wav"].sha256 == hashlib.sha256(b"a recording").hexdigest()
    assert Reconciler(jobs, work).run() == (0, 0)  # owned now


def test_a_job_whose_recording_vanished_is_made_due_and_reported_once(folders, work) -> None:
    jobs = JobQueue(folders.state / "q.db")
    job_id = jobs.begin_claim(b"a.wav", "gone.a.wav")
    work.file("gone.a.wav").write_bytes(b"x")
    jobs.finish_claim(job_id, hashed("sha", 1))
    jobs.requeue(job_id, 500, "disk full", refund=True)
    work.file("gone.a.wav").unlink()
    reconciler = Reconciler(jobs, work)
    assert reconciler.run() == (0, 1)
    assert jobs.get(job_id).not_before <= time.time()  # the worker fails it now, with a reason
    assert reconciler.run() == (0, 0)


def test_a_disposal_under_way_is_not_taken_for_a_loss(folders, work) -> None:
    jobs = JobQueue(folders.state / "q.db")
    job_id = jobs.begin_claim(b"a.wav", "w.a.wav")
    jobs.finish_claim(job_id, hashed("sha", 1))  # its file is not there…
    jobs.mark_published(job_id, ["/out/a.json"], 1.0, 0.1)
    jobs.record_disposal_start(job_id)  # …because the disposal removed it
    assert Reconciler(jobs, work).run() == (0, 0)


def test_doctor_says_when_the_disk_and_the_database_disagree(folders, work) -> None:
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
    )
    jobs = JobQueue(settings.database)
    [agree] = doctor._work_folder(settings)
    assert agree.level == "ok" and "no daemon runs" in agree.message
    job_id = jobs.begin_claim(b"a.wav", "lost.a.wav")
    jobs.finish_claim(job_id, hashed("sha", 1))
    work.file(work_name("stray.wav")).write_bytes(b"x")
    [finding] = doctor._work_folder(settings)
    assert finding.level == "fail"
    assert "1 recording in" in finding.message and "1 job whose" in finding.message


def test_a_second_daemon_on_the_same_inbox_is_refused(folders, work) -> None:
    """Another state folder, the same inbox: it would take our claimed files for strays."""
    other = WorkFolder(folders.inbox)
    with pytest.raises(Exception, match="already working on this inbox"):
        other.open()
