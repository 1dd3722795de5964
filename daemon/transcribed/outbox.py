"""Transcript files: one small writer per format, published atomically into the outbox.

A transcript is never visible half-written, and a transcript of other content is never
overwritten: a suffixed name is chosen instead. The JSON goes first and marks whose files a
name holds, so a retry after a crash finds and reuses its own name.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed import faults
from transcribed.durable import fit_name, fsync_dir, make_folders, write_temp
from transcribed.subtitles import render_srt, render_tsv, render_vtt
from transcribed.transcript import Transcript, join_texts


def render_json(transcript: Transcript) -> bytes:
    return json.dumps(transcript.to_json_dict(), indent=2, ensure_ascii=False).encode() + b"\n"


PARAGRAPH_PAUSE_SECONDS = 2.0


def render_txt(transcript: Transcript) -> bytes:
    """The text, with a new paragraph wherever the speaker paused for 2 s or more, or another
    speaker takes over; with speaker labels, a paragraph starts with its speaker ("S2: …")
    when the speaker changes."""
    paragraphs: list[tuple[str | None, list[str]]] = []
    for segment in transcript.segments:
        if not segment.text:
            continue
        paused = segment.pause_before >= PARAGRAPH_PAUSE_SECONDS
        if not paragraphs or paused or segment.speaker != paragraphs[-1][0]:
            paragraphs.append((segment.speaker, []))
        paragraphs[-1][1].append(segment.text)
    shown, previous = [], None
    for speaker, texts in paragraphs:
        label = f"{speaker}: " if speaker is not None and speaker != previous else ""
        shown.append(label + join_texts(texts))
        previous = speaker
    text = "\n\n".join(shown)
    return (text + "\n").encode() if text else b""


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
    ):
        # JSON is always written, first: it records the source and claims the name (see above).
        self._root = root
        self._formats = ["json", *(name for name in dict.fromkeys(formats) if name != "json")]
        self._mode = mode
        self._language_in_names = language_in_names

    def publish(self, transcript: Transcript, relpath: str) -> list[Path]:
        """Write every format for the recording at inbox-relative `relpath`; return the paths,
        durable (files and folder fsynced) when this returns."""
        folder = make_folders(self._root, Path(PurePosixPath(relpath).parent))
        stem = self._free_stem(
            folder, PurePosixPath(relpath).stem, transcript.source.sha256, transcript.language
        )
        # Every file is written and fsynced before any becomes visible: a failed write or
        # fsync (disk full, EIO) leaves nothing behind but hidden temp files we remove.
        staged: list[tuple[Path, Path]] = []
        try:
            for extension, target in self._targets(folder, stem, transcript.language):
                data = WRITERS[extension](transcript)
                label = f"outbox.{extension}"
                staged.append((write_temp(folder, target.name, data, self._mode, label), target))
            for temp, target in staged:
                os.replace(temp, target)
                faults.point(f"outbox.{target.suffix[1:]}.published", target.name)
        finally:
            for temp, _target in staged:
                temp.unlink(missing_ok=True)
        fsync_dir(folder)
        faults.point("outbox.fsynced", stem)
        return [target for _temp, target in staged]

    def retract(self, relpath: str, sha256: str) -> list[Path]:
        """Remove the transcript files a failed job may have published before a crash (I2: its
        content may still get a transcript under a duplicate's name). Returns what was removed."""
        folder = self._root / PurePosixPath(relpath).parent
        stem = self._free_stem(folder, PurePosixPath(relpath).stem, sha256)
        marker = _read_marker(folder / f"{stem}.json")
        if marker is None or marker.get("source", {}).get("sha256") != sha256:
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

    def _free_stem(self, folder: Path, stem: str, sha256: str, language: str | None = None) -> str:
        """`stem`, or `stem-2`, `stem-3`…: the first whose files are absent or hold this content."""
        reserve = max(len(f".{extension}") for extension in self._formats) + _LANGUAGE_TAG
        candidate, number = fit_name(stem, "", reserve), 2
        while not self._usable(folder, candidate, sha256, language):
            candidate, number = fit_name(stem, f"-{number}", reserve), number + 1
        return candidate

    def _usable(self, folder: Path, stem: str, sha256: str, language: str | None) -> bool:
        marker = folder / f"{stem}.json"
        if os.path.lexists(marker):
            return _source_sha(marker) == sha256
        targets = self._targets(folder, stem, language)
        return not any(os.path.lexists(path) for _extension, path in targets)


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _source_sha(marker: Path) -> str | None:
    try:
        return str(_read_marker(marker)["source"]["sha256"])  # type: ignore[index]
    except (KeyError, TypeError):
        return None  # someone else's file: leave it alone
