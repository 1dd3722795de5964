"""Rebuilding the job database from the disk, which is the truth (docs/design.md I5).

Published transcripts name their source's content (the JSON's `source.sha256`) and what the
model was asked (`request`), and failed recordings lie in failed_dir beside their reason
files: from these a lost or damaged database is indexed again, so that nothing is transcribed
twice and `status` agrees with the disk. The work folder's files are claimed again by the
daemon's reconcile at its next start (their names carry their inbox paths).
"""

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcribed.files.content import hash_file
from transcribed.files.names import REASON_SUFFIX
from transcribed.output.outbox import WRITERS, read_json_object
from transcribed.output.transcript import request_key
from transcribed.state.queue import INDEXED_PREFIX, Job, JobQueue, JobState

_KNOWN_EXTENSIONS = tuple(f".{extension}" for extension in WRITERS)


@dataclass(frozen=True)
class Indexed:
    transcripts: int
    failed: int


def index_disk(jobs: JobQueue, outbox: Path, failed_dir: Path) -> Indexed:
    """Add a done job for each published transcript and a failed job for each reason file."""
    transcripts = sum(1 for job in _published(outbox) if jobs.add_finished(job))
    failed = sum(1 for job in _failed(failed_dir) if jobs.add_finished(job))
    return Indexed(transcripts, failed)


def set_aside(database: Path) -> Path | None:
    """Rename a damaged database (and its WAL files) out of the way; return its new name."""
    if not database.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = database.with_name(f"{database.name}.broken-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{database}{suffix}")
        if part.exists():
            part.rename(f"{aside}{suffix}")
    return aside


def _walk(root: Path, suffix: str) -> Iterator[Path]:
    for folder, subfolders, names in os.walk(root):  # never enters symlinked folders
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in sorted(names):
            if name.endswith(suffix) and not name.startswith("."):
                yield Path(folder, name)


def _published(outbox: Path) -> Iterator[Job]:
    for path in _walk(outbox, ".json"):
        data = read_json_object(path)
        source = data.get("source") if data else None
        if not isinstance(source, dict) or not source.get("sha256") or not source.get("name"):
            continue  # not one of our transcripts
        relative = path.parent.relative_to(outbox) / str(source["name"])
        yield _finished(
            JobState.DONE,
            relative,
            sha256=str(source["sha256"]),
            size=source.get("size"),
            outputs=_siblings(path),
            audio_seconds=data.get("duration") if data else None,
            request=_request(data) if data else None,
            language=data.get("language") if data else None,
            finished=path.stat().st_mtime,
        )


def _failed(failed_dir: Path) -> Iterator[Job]:
    for reason in _walk(failed_dir, REASON_SUFFIX):
        original = reason.with_name(reason.name.removesuffix(REASON_SUFFIX))
        content = hash_file(original) if original.is_file() else None
        data = read_json_object(reason) or {}
        yield _finished(
            JobState.FAILED,
            original.relative_to(failed_dir),
            sha256=content.sha256 if content else None,
            size=content.size if content else None,
            error=str(data.get("error") or "failed (reason file unreadable)"),
            disposed_to=str(original),
            finished=reason.stat().st_mtime,
        )


def _finished(state: JobState, relative: Path, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "sha256": None,
        "size": None,
        "outputs": (),
        "disposed_to": None,
        "error": None,
    } | fields
    return Job(
        id=0,
        state=state,
        relpath=os.fsencode(relative),
        work_name=f"{INDEXED_PREFIX}{uuid.uuid4().hex}",
        attempts=0,
        duplicate_of=None,
        **values,
    )


def _siblings(transcript: Path) -> tuple[str, ...]:
    """The JSON and the other files of the same transcript (`stem.txt`, `stem.zh.srt`…)."""
    prefix = f"{transcript.stem}."
    others = sorted(
        str(path)
        for path in transcript.parent.iterdir()
        if path.name.startswith(prefix) and path.suffix in _KNOWN_EXTENSIONS and path != transcript
    )
    return (str(transcript), *others)


def _request(data: dict[str, Any]) -> str | None:
    model, request = data.get("model"), data.get("request")
    if isinstance(model, dict) and isinstance(request, dict) and model.get("id"):
        return request_key(str(model["id"]), request)
    return None
