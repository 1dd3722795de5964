"""Transcript files: one small writer per format, published atomically into the outbox.

A transcript is never visible half-written, and another recording's transcript is never
overwritten: a suffixed name is chosen instead. The JSON goes first and marks whose files a
name holds (the source's content and name), so a retry after a crash finds and reuses its own
name, and taking a name is atomic, so jobs publishing at once never share one.
"""

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed import faults
from transcribed.files.durable import (
    check_outside,
    fit_name,
    fsync_dir,
    make_folders,
    take_name,
    write_temp,
)
from transcribed.output.subtitles import render_srt, render_tsv, render_vtt
from transcribed.output.transcript import Segment, Transcript, join_texts


def render_json(transcript: Transcript) -> bytes:
    return json.dumps(transcript.to_json_dict(), indent=2, ensure_ascii=False).encode() + b"\n"


PARAGRAPH_PAUSE_SECONDS = 2.0


def render_txt(transcript: Transcript) -> bytes:
    """The text, with a new paragraph wherever the speaker paused for 2 s or more, or another
    speaker takes over; with speaker labels, a paragraph starts with its speaker ("S2: …")
    when the speaker changes."""
    shown = [
        f"{label}: {text}" if label is not None else text
        for label, text in txt_paragraphs(transcript.segments)
    ]
    text = "\n\n".join(shown)
    return (text + "\n").encode() if text else b""


def txt_paragraphs(segments: Iterable[Segment]) -> list[tuple[str | None, str]]:
    """The .txt's paragraphs: (the speaker label it starts with, or None; its text). The
    page shows a transcript by this same rule."""
    paragraphs: list[tuple[str | None, list[str]]] = []
    for segment in segments:
        if not segment.text:
            continue
        paused = segment.pause_before >= PARAGRAPH_PAUSE_SECONDS
        if not paragraphs or paused or segment.speaker != paragraphs[-1][0]:
            paragraphs.append((segment.speaker, []))
        paragraphs[-1][1].append(segment.text)
    shown: list[tuple[str | None, str]] = []
    previous = None
    for speaker, texts in paragraphs:
        shown.append(
            (speaker if speaker is not None and speaker != previous else None, join_texts(texts))
        )
        previous = speaker
    return shown


WRITERS: dict[str, Callable[[Transcript], bytes]] = {
    "json": render_json,
    "txt": render_txt,
    "srt": render_srt,
    "vtt": render_vtt,
    "tsv": render_tsv,
}
SUBTITLES = ("srt", "vtt")  # the formats that may carry the language in their name
_LANGUAGE_TAG = 12  # bytes kept free for ".<code>" in subtitle names


class Outbox:
    """Publishes transcripts below `root`, mirroring the recording's inbox subfolder."""

    def __init__(
        self,
        root: Path,
        formats: tuple[str, ...] = ("json", "txt"),
        mode: int = 0o640,
        language_in_names: bool = False,
        inbox: Path | None = None,
    ):
        # JSON is always written, first: it records the source and claims the name (see above).
        self._root = root
        self._formats = ["json", *(name for name in dict.fromkeys(formats) if name != "json")]
        self._mode = mode
        self._language_in_names = language_in_names
        self._inbox = inbox  # never publish into it (a swapped symlink would loop forever)

    @property
    def root(self) -> Path:
        return self._root

    def publish(
        self, transcript: Transcript, relpath: str, replaces: Sequence[str] = ()
    ) -> list[Path]:
        """Write every format for the recording at inbox-relative `relpath`; return the paths,
        durable (files and folder fsynced) when this returns. `replaces`: the files of an
        earlier version of this recording's transcript (its content changed after it was
        taken), replaced in place where the names are the same and removed where not."""
        folder = self._folder(relpath)
        owner = _Owner(transcript.source.sha256, transcript.source.name)
        earlier = _earlier_json(replaces, owner.name)
        # Every file is written and fsynced before any becomes visible: a failed write or
        # fsync (disk full, EIO) leaves nothing behind but hidden temp files we remove.
        temps: dict[str, Path] = {}
        try:
            for extension in self._formats:
                data = WRITERS[extension](transcript)
                label = f"outbox.{extension}"
                temps[extension] = write_temp(folder, f"x.{extension}", data, self._mode, label)
            stem = self._reserve(
                folder,
                PurePosixPath(relpath).stem,
                _Claim(owner, earlier),
                temps["json"],
                transcript.language,
            )
            targets = self._targets(folder, stem, transcript.language)
            for extension, target in targets[1:]:
                os.replace(temps[extension], target)
                faults.point(f"outbox.{extension}.published", target.name)
        finally:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
        fsync_dir(folder)
        faults.point("outbox.fsynced", stem)
        published = [target for _extension, target in targets]
        if earlier is not None:
            _remove_left_over(replaces, published)
        return published

    def _folder(self, relpath: str) -> Path:
        if self._inbox is not None:
            check_outside(self._root, self._inbox)
        folder = make_folders(self._root, Path(PurePosixPath(relpath).parent))
        if self._inbox is not None:
            check_outside(folder, self._inbox)
        return folder

    def _reserve(
        self, folder: Path, stem: str, claim: "_Claim", json_temp: Path, language: str | None
    ) -> str:
        """Publish the JSON under the first free stem (`stem`, `stem-2`, …) and return that
        stem. Taking the name is one atomic link, which fails if the name exists: two jobs
        with the same stem publishing at once never take the same name, and a stem whose JSON
        is already this recording's (a retry after a crash, or an earlier version) is
        reused."""
        for candidate in self._candidates(stem):
            target = folder / f"{candidate}.json"
            standing = (
                "ours"
                if target == claim.earlier
                else self._standing(folder, candidate, claim.owner, language)
            )
            if standing == "ours":
                os.replace(json_temp, target)  # from an attempt a crash cut short
            elif standing == "taken" or not take_name(json_temp, target):
                continue  # another recording's, or taken by another job a moment ago
            faults.point("outbox.json.published", target.name)
            return candidate
        raise AssertionError("unreachable: the candidates never end")

    def published(self, relpath: str, sha256: str, name: str) -> Path | None:
        """The JSON of this recording's transcript (the same content, dropped under the same
        name) already below the root, or None: a one-shot run does not redo it silently."""
        folder = self._root / PurePosixPath(relpath).parent
        owner = _Owner(sha256, name)
        for candidate in self._candidates(PurePosixPath(relpath).stem):
            standing = self._standing(folder, candidate, owner, None)
            if standing == "ours":
                return folder / f"{candidate}.json"
            if standing == "free":
                return None
        raise AssertionError("unreachable: the candidates never end")

    def retract(self, relpath: str, sha256: str, name: str) -> list[Path]:
        """Remove the transcript files a failed job may have published before a crash (I2:
        its name gets a failure reason instead). Returns what was removed."""
        folder = self._root / PurePosixPath(relpath).parent
        owner = _Owner(sha256, name)
        stem = next(
            c
            for c in self._candidates(PurePosixPath(relpath).stem)
            if self._standing(folder, c, owner, None) != "taken"
        )
        marker = read_json_object(folder / f"{stem}.json")
        if marker is None or _owner_of(marker) != owner:
            return []  # nothing of ours was published
        targets = self._targets(folder, stem, marker.get("language"))
        removed = [path for _extension, path in reversed(targets)]
        for path in removed:  # json last: it marks the name as ours until the rest is gone
            path.unlink(missing_ok=True)
        fsync_dir(folder)
        return removed

    def _targets(self, folder: Path, stem: str, language: str | None) -> list[tuple[str, Path]]:
        """(format, path) for each file of a transcript, JSON first."""
        targets = []
        for extension in self._formats:
            tagged = self._language_in_names and language and extension in SUBTITLES
            name = f"{stem}.{language}.{extension}" if tagged else f"{stem}.{extension}"
            targets.append((extension, folder / name))
        return targets

    def _candidates(self, stem: str) -> Iterator[str]:
        """`stem`, `stem-2`, `stem-3`…, each shortened to leave room for the longest suffix."""
        reserve = max(len(f".{extension}") for extension in self._formats) + _LANGUAGE_TAG
        yield fit_name(stem, "", reserve)
        for number in itertools.count(2):
            yield fit_name(stem, f"-{number}", reserve)

    def _standing(self, folder: Path, stem: str, owner: "_Owner", language: str | None) -> str:
        """`ours` (the stem's JSON is this recording's), `free` (none of its files exist, a
        subtitle named with this language included), or `taken`. Only `ours` may be replaced:
        a free name can be taken by another job the next moment, so it is taken with
        `take_name`, never by replacing."""
        marker = folder / f"{stem}.json"
        if os.path.lexists(marker):
            found = read_json_object(marker)
            return "ours" if found is not None and _owner_of(found) == owner else "taken"
        files = self._targets(folder, stem, language)
        return "taken" if any(os.path.lexists(path) for _extension, path in files) else "free"


@dataclass(frozen=True)
class _Owner:
    """Whose transcript a JSON is: the recording's content and the name it was dropped as."""

    sha256: str
    name: str


@dataclass(frozen=True)
class _Claim:
    """Who may take a name: the owner, and the JSON of its earlier version (if any)."""

    owner: _Owner
    earlier: Path | None


def _earlier_json(replaces: Sequence[str], name: str) -> Path | None:
    """The JSON among `replaces` when it is still there and still this recording's (by its
    name: its content is the earlier version's); None otherwise."""
    found = next((Path(path) for path in replaces if path.endswith(".json")), None)
    if found is None:
        return None
    marker = read_json_object(found)
    owner = _owner_of(marker) if marker is not None else None
    return found if owner is not None and owner.name == name else None


def published_source(outputs: Sequence[str]) -> tuple[str, str] | None:
    """(sha256, name) of the recording the JSON among `outputs` describes, read from the disk
    now; None when it is gone or unreadable (docs/design.md I6: what was published once may
    have been removed or replaced since)."""
    found = next((path for path in outputs if path.endswith(".json")), None)
    marker = read_json_object(Path(found)) if found is not None else None
    owner = _owner_of(marker) if marker is not None else None
    return (owner.sha256, owner.name) if owner is not None else None


def retract_earlier(replaces: Sequence[str], name: str) -> list[Path]:
    """Remove the files an earlier version of the recording `name` published (it failed for
    good since: nothing may describe content that is neither archived nor final); returns
    what was removed."""
    if _earlier_json(replaces, name) is None:
        return []
    _remove_left_over(replaces, [])
    return [Path(path) for path in replaces]


def _remove_left_over(replaces: Sequence[str], published: list[Path]) -> None:
    """Files of the earlier version that the new one did not replace (a subtitle named with
    another language, a format no longer asked for): removed, their folders fsynced."""
    left = [Path(path) for path in replaces if Path(path) not in published]
    for path in left:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in left}:
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(folder)


def _owner_of(marker: dict[str, Any]) -> "_Owner | None":
    source = marker.get("source")
    if not isinstance(source, dict):
        return None  # someone else's file: leave it alone
    return _Owner(str(source.get("sha256")), str(source.get("name")))


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON file's top-level object; None when it is unreadable or not one (not ours)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
