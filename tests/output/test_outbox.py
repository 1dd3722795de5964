"""Atomic publishing, mirrored folders, and never overwriting another recording's transcript."""

import json
import os
import threading
from pathlib import Path

import pytest

from transcribed.output.outbox import Outbox
from transcribed.output.transcript import ModelInfo, Segment, SourceInfo, Transcript


def _transcript(sha: str, text: str = "hello world", name: str = "a.wav") -> Transcript:
    return Transcript(
        text=text,
        language="en",
        language_confidence=0.97,
        languages={"en": 1.0},
        segments=(Segment(0.0, 1.5, text, "en", "English", 0.97),),
        duration=1.5,
        status="ok",
        source=SourceInfo(name, sha, 10),
        model=ModelInfo("m", "cpu", "float32"),
        created="2026-01-01T00:00:00+00:00",
        processing_seconds=0.1,
    )


def test_publishes_txt_and_json_with_every_key_mirroring_subfolders(tmp_path: Path) -> None:
    written = Outbox(tmp_path, mode=0o640).publish(_transcript("a" * 64), "team/x/a.wav")
    assert sorted(p.name for p in written) == ["a.json", "a.txt"]
    data = json.loads((tmp_path / "team/x/a.json").read_text())
    assert {
        "text",
        "language",
        "segments",
        "duration",
        "source",
        "model",
        "created",
        "processing_seconds",
    } <= data.keys()
    assert data["segments"][0].keys() >= {"start", "end", "text", "language"}
    assert (tmp_path / "team/x/a.txt").read_text() == "hello world\n"
    assert (tmp_path / "team/x/a.txt").stat().st_mode & 0o777 == 0o640
    assert [p for p in (tmp_path / "team/x").iterdir() if p.name.startswith(".")] == []


def test_other_content_gets_a_suffix_and_the_same_content_reuses_its_name(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.publish(_transcript("a" * 64, "first"), "a.wav")
    second = outbox.publish(_transcript("b" * 64, "second"), "a.wav")
    assert [p.name for p in second] == ["a-2.json", "a-2.txt"]
    again = outbox.publish(_transcript("a" * 64, "first"), "a.wav")  # a retry after a crash
    assert [p.name for p in again] == ["a.json", "a.txt"]
    assert (tmp_path / "a.txt").read_text() == "first\n"
    assert (tmp_path / "a-2.txt").read_text() == "second\n"


def test_a_users_own_file_with_the_same_name_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("my notes")
    written = Outbox(tmp_path).publish(_transcript("a" * 64), "a.wav")
    assert [p.name for p in written] == ["a-2.json", "a-2.txt"]
    assert (tmp_path / "a.txt").read_text() == "my notes"


def test_names_that_are_not_utf8_are_published(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9 \n.wav")
    Outbox(tmp_path).publish(_transcript("c" * 64), name)
    assert os.path.exists(os.fsencode(tmp_path) + b"/caf\xe9 \n.json")


def test_retract_removes_only_the_failed_jobs_own_transcript(tmp_path) -> None:
    outbox = Outbox(tmp_path)
    ours, theirs = _transcript("a" * 64), _transcript("b" * 64)
    outbox.publish(theirs, "talk.wav")  # another recording with the same name came first
    outbox.publish(ours, "talk.wav")
    assert outbox.retract("talk.wav", "a" * 64, "a.wav") == [
        tmp_path / "talk-2.txt",
        tmp_path / "talk-2.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json", "talk.txt"]
    assert outbox.retract("talk.wav", "c" * 64, "a.wav") == []


def test_jobs_publishing_the_same_stem_at_once_never_share_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 1: meeting.flac, .m4a, .mp3, .ogg, .wav (different content) published at once:
    five transcripts, each JSON naming its own source."""
    outbox = Outbox(tmp_path)
    names = [f"meeting.{extension}" for extension in ("flac", "m4a", "mp3", "ogg", "wav")]
    # Every job finds the name `meeting` free before any of them takes it: the worst case.
    all_looked = threading.Barrier(len(names), timeout=10)
    looked = threading.local()
    real_standing = Outbox._standing

    def look_then_wait(self: Outbox, folder: Path, stem: str, *rest: object) -> str:
        standing = real_standing(self, folder, stem, *rest)  # type: ignore[arg-type]
        if not getattr(looked, "once", False):
            looked.once = True
            all_looked.wait()
        return standing

    monkeypatch.setattr(Outbox, "_standing", look_then_wait)
    results: dict[str, list[Path]] = {}

    def publish(number: int, name: str) -> None:
        transcript = _transcript(f"{number}" * 64, f"text {number}", name)
        results[name] = outbox.publish(transcript, name)

    threads = [threading.Thread(target=publish, args=pair) for pair in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = {json.loads(paths[0].read_text())["source"]["name"] for paths in results.values()}
    assert published == set(names)
    assert len({paths[0] for paths in results.values()}) == 5
    assert len(list(tmp_path.glob("meeting*.json"))) == 5


def test_the_same_content_under_another_name_gets_its_own_files(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.publish(_transcript("a" * 64, name="notes.wav"), "notes.wav")
    copy = outbox.publish(_transcript("a" * 64, name="notes.flac"), "notes.flac")
    assert [p.name for p in copy] == ["notes-2.json", "notes-2.txt"]


def test_nothing_is_published_into_the_inbox(tmp_path: Path) -> None:
    """Finding 14: an outbox swapped for a symlink into the inbox would loop forever."""
    inbox, real = tmp_path / "inbox", tmp_path / "real"
    (inbox / "sub").mkdir(parents=True)
    real.mkdir()
    outbox = tmp_path / "outbox"
    outbox.symlink_to(inbox / "sub")
    with pytest.raises(OSError, match="leads into the inbox"):
        Outbox(outbox, inbox=inbox).publish(_transcript("a" * 64), "a.wav")
    assert list((inbox / "sub").iterdir()) == []
