"""docs/design.md §2's invariants, checked against the real folders after a crash or at the end.

I1: an original is never gone before a durable transcript of its content exists.
I2: at most one visible transcript per dropped name and content (each name gets its own),
    never a partial one.
I4: every file dropped ends done, queued, failed (with a reason) or ignored.
(I3, nothing outside our folders touched, is checked with canary files by the tests.)
"""

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from conftest import Folders


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    """Every regular file below `root`, hidden ones included."""
    return [
        Path(folder, name)
        for folder, _subfolders, names in os.walk(root)
        for name in names
        if os.path.isfile(os.path.join(folder, name))
        and not os.path.islink(os.path.join(folder, name))
    ]


def visible_transcripts(outbox: Path) -> dict[str, list[Path]]:
    """sha256 of the source -> its visible JSON transcripts; asserts every visible file is
    complete: the JSON parses and its .txt sibling, when present, holds the same text."""
    by_content: dict[str, list[Path]] = defaultdict(list)
    for path in _files(outbox):
        if path.name.startswith("."):
            continue  # temp files are hidden and never count as transcripts
        if path.suffix == ".json":
            data = json.loads(path.read_bytes())  # a partial file would not parse
            by_content[data["source"]["sha256"]].append(path)
            text = path.with_suffix(".txt")
            if text.exists():
                # The .txt breaks paragraphs where the JSON text has a space: compare the words.
                same = "".join(text.read_text().split()) == "".join(data["text"].split())
                assert same, f"partial {text}"
        else:
            assert path.with_suffix(".json").exists(), f"{path} without its JSON"
    return by_content


def transcripts_by_name(outbox: Path) -> dict[tuple[str, str], list[Path]]:
    """(source name, sha256) -> its visible JSON transcripts (each checked complete)."""
    by_name: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for paths in visible_transcripts(outbox).values():
        for path in paths:
            source = json.loads(path.read_bytes())["source"]
            by_name[source["name"], source["sha256"]].append(path)
    return by_name


def originals_present(folders: Folders) -> dict[str, list[Path]]:
    """sha256 -> where a byte-identical copy of an original still exists in our folders."""
    where: dict[str, list[Path]] = defaultdict(list)
    for root in (folders.inbox, folders.archive, folders.failed):
        for path in _files(root):
            if not path.name.endswith((".error.json", ".tmp")):
                where[digest(path)].append(path)
    return where


def check_i1_i2(folders: Folders, dropped: dict[str, str]) -> None:
    """At any instant, crashed or not. `dropped` maps each dropped name to its sha256."""
    transcripts = visible_transcripts(folders.outbox)
    by_name = transcripts_by_name(folders.outbox)
    assert all(len(paths) == 1 for paths in by_name.values()), "I2: duplicate transcript"
    present = originals_present(folders)
    for name, sha in dropped.items():
        assert sha in present or sha in transcripts, f"I1: {name} lost without a transcript"
        archived = any(folders.archive in path.parents for path in present.get(sha, []))
        assert not archived or sha in transcripts, f"I1: {name} archived before its transcript"


def check_final(
    folders: Folders, dropped: dict[str, str], unreadable: frozenset[str] = frozenset()
) -> dict[str, int]:
    """After the daemon finished: each recording transcribed once and archived, or failed with
    a reason; nothing left in the inbox. Returns how many ended each way."""
    check_i1_i2(folders, dropped)
    transcripts = visible_transcripts(folders.outbox)
    by_name = transcripts_by_name(folders.outbox)
    archived = {digest(path) for path in _files(folders.archive)}
    failed = {
        digest(path): path for path in _files(folders.failed) if not path.name.endswith(".json")
    }
    outcome = {"transcribed": 0, "failed": 0}
    for name, sha in dropped.items():
        if sha in failed:
            reason = failed[sha].with_name(failed[sha].name + ".error.json")
            assert json.loads(reason.read_text())["error"], f"I4: {name} failed without a reason"
            outcome["failed"] += 1
        else:
            assert name not in unreadable, f"{name} should have failed"
            assert sha in transcripts and sha in archived, f"I4: {name} neither done nor failed"
            assert (name, sha) in by_name, f"I2: {name} has no transcript of its own"
            outcome["transcribed"] += 1
    leftovers = _files(folders.inbox)
    assert leftovers == [], f"I4: left behind {leftovers}"
    return outcome
