"""Files that are not recordings: one `intake.ignored` line each (with the reason), not one
per rescan; left in place; forgotten once gone, so months of rescans hold no memory."""

import queue
from pathlib import Path

import structlog

from transcribed.intake.claim import Intake
from transcribed.intake.strays import Strays
from transcribed.intake.watcher import walk_files
from transcribed.state.queue import JobQueue
from transcribed.state.workfolder import WorkFolder


def _intake(folders) -> Intake:
    work = WorkFolder(folders.inbox)
    work.open()
    return Intake(
        inbox=folders.inbox,
        work=work,
        jobs=JobQueue(folders.state / "jobs.sqlite3"),
        arrivals=queue.SimpleQueue(),
        settle_seconds=0.01,
        rescan_seconds=300,
    )


def _ignored(logged: list[dict]) -> dict[str, str]:
    return {e["file"]: e["reason"] for e in logged if e["event"] == "intake.ignored"}


def test_each_non_recording_is_logged_once_with_its_reason(folders) -> None:
    (folders.inbox / "team").mkdir()
    for name in ("notes.txt", "memo", "team/photo.JPG", "dictation.dss", "call.wav"):
        (folders.inbox / name).write_bytes(b"x")
    for temporary in (".hidden.txt", "upload.part", "~lock.docx"):
        (folders.inbox / temporary).write_bytes(b"x")
    (folders.inbox / "linked folder").symlink_to(folders.outbox)
    intake = _intake(folders)
    with structlog.testing.capture_logs() as logged:
        for _ in range(3):
            intake.rescan()
    assert _ignored(logged) == {
        "notes.txt": "not a recording: .txt is not an audio extension",
        "memo": "not a recording: the name has no audio extension",
        "team/photo.JPG": "not a recording: .jpg is not an audio extension",
        "dictation.dss": "not a recording: .dss is not an audio extension",
        "linked folder": "symbolic link (never followed)",
    }
    assert sum(e["event"] == "intake.ignored" for e in logged) == 5, "once, not per rescan"
    assert ".3gp" in next(e["hint"] for e in logged if e["event"] == "intake.ignored")
    assert (folders.inbox / "notes.txt").exists(), "left where it is"


def test_a_new_file_under_the_same_name_is_logged_again_an_edited_one_is_not(folders) -> None:
    notes = folders.inbox / "notes.txt"
    notes.write_bytes(b"first")
    intake = _intake(folders)
    intake.rescan()
    with structlog.testing.capture_logs() as logged:
        with notes.open("ab") as handle:
            handle.write(b" and more")  # the same file, edited
        intake.rescan()
        assert _ignored(logged) == {}
        notes.rename(folders.inbox / ".kept")  # (keeps its inode from being reused)
        notes.write_bytes(b"another file")  # a new file under the old name
        intake.rescan()
    assert list(_ignored(logged)) == ["notes.txt"]


def test_memory_holds_only_what_is_in_the_inbox(tmp_path: Path) -> None:
    strays = Strays(tmp_path)
    for number in range(500):
        (tmp_path / f"{number}.txt").write_bytes(b"")
    with structlog.testing.capture_logs():
        assert list(strays.recordings_among(walk_files(tmp_path))) == []
        assert len(strays) == 500
        for path in tmp_path.iterdir():
            path.unlink()
        assert list(strays.recordings_among(walk_files(tmp_path))) == []
    assert len(strays) == 0
