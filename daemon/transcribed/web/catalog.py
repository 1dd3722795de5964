"""What the page shows, read without changing anything: the job database (read-only SQLite),
the search index, and the files a job recorded.

Files are found by job id only: the path comes from the job's own row (written by the daemon),
must lie below the configured outbox (transcripts) or archive (originals), and is opened one
folder at a time without following any symlink. Nothing a request says is used as a path.
"""

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from transcribed.files.names import display_name
from transcribed.logs import get_logger
from transcribed.output.outbox import txt_paragraphs
from transcribed.output.search_index import Hit, IndexDamaged, IndexState, SearchIndex
from transcribed.output.transcript import Segment
from transcribed.settings import Settings
from transcribed.state import overview
from transcribed.state.queue import Job, JobQueue, JobState

log = get_logger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_TRANSCRIPT_BYTES = 64 * 1024 * 1024
_DAY = 86400.0
LISTED = 1000  # the newest jobs the transcripts list looks through
FORMATS = ("txt", "json", "srt", "vtt", "tsv")
REBUILDING = (
    "The search index is being rebuilt from the transcripts in the outbox; until it is done, "
    "search may miss some of them."
)
_REPAIR_PAUSE_SECONDS = 60.0  # after a repair failed (the folder not writable, say)


class NotAvailable(Exception):
    """The file a job recorded is gone, outside its folder, or not a plain file."""


def open_below(root: Path, recorded: str) -> int:
    """A read-only descriptor of the regular file `recorded` (an absolute path a job row
    holds), provided it lies below `root` and no folder or file on the way is a symlink."""
    relative = PurePosixPath(os.path.relpath(os.path.normpath(recorded), os.path.normpath(root)))
    if relative.is_absolute() or not relative.parts or ".." in relative.parts:
        raise NotAvailable(f"{display_name(recorded)} is not below {display_name(str(root))}")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = child
        fd = os.open(relative.parts[-1], _FILE_FLAGS, dir_fd=folder)
    except OSError as error:
        raise NotAvailable(f"{display_name(recorded)}: {error.strerror}") from None
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAvailable(f"{display_name(recorded)} is not a plain file")
    return fd


@dataclass(frozen=True)
class Listed:
    """A row of the transcripts list."""

    job: Job
    name: str
    folder: str
    language: str | None


class IndexRepair:
    """The page's part in the search index's self-repair: a damaged index (or a rebuild cut
    short) is rebuilt in a background thread, one at a time, while the pages go on without
    it. The page's unit may write the state folder, where the index lives."""

    def __init__(self, index: SearchIndex, settings: Settings) -> None:
        self.index = index
        self.settings = settings
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failed_at = -_REPAIR_PAUSE_SECONDS

    def note(self) -> str | None:
        """A line for the page while the index cannot be fully used (starting a repair when
        it needs one); None when it can, or when there is none yet."""
        state = self.index.state()
        if state in (IndexState.SOUND, IndexState.MISSING):
            return None
        if state is IndexState.DAMAGED or not self.index.rebuilding_elsewhere():
            self.start()
        return REBUILDING

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if time.monotonic() - self._failed_at < _REPAIR_PAUSE_SECONDS:
                return
            self._thread = threading.Thread(target=self._run, name="index-repair", daemon=True)
            self._thread.start()

    def wait(self, timeout: float) -> None:
        """For tests and shutdown: until the repair running now (if any) ends."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            self.index.repair(self.settings.outbox, self.settings.database)
        except (OSError, sqlite3.Error) as error:
            self._failed_at = time.monotonic()
            log.warning(
                "search.repair_failed",
                error=f"{type(error).__name__}: {error}",
                hint="run `transcribed search --rebuild` as the service's user",
            )


class Catalog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.search_index = SearchIndex(settings.search_database, read_only=True)
        self.index_repair = IndexRepair(self.search_index, settings)

    def search(self, query: str) -> tuple[list[Hit], str | None]:
        """The hits for `query`, and a note when the index is being rebuilt meanwhile."""
        note = self.index_repair.note()
        try:
            return self.search_index.search(query), note
        except IndexDamaged:  # found by the search itself: deeper than the quick look
            self.index_repair.start()
            return [], REBUILDING
        except sqlite3.OperationalError:  # a fresh file a rebuild has not filled yet
            return [], note or REBUILDING

    def languages(self) -> dict[int, str | None]:
        """Each indexed job's main language; none while the index cannot be read."""
        try:
            return self.search_index.known_jobs()
        except IndexDamaged:
            self.index_repair.start()
        except sqlite3.Error:
            pass
        return {}

    @contextmanager
    def jobs(self) -> Iterator[JobQueue]:
        """A read-only connection to the job database, for one request."""
        if not self.settings.database.is_file():
            raise NotAvailable(f"no job database at {self.settings.database} yet")
        queue = JobQueue(self.settings.database, read_only=True)
        try:
            yield queue
        finally:
            queue.close()

    def status(self) -> dict[str, Any]:
        """`transcribed status --json`'s report (the same function), plus the last day."""
        with self.jobs() as jobs:
            report = overview.daemon_status(self.settings, jobs)
            recordings, audio, busy = jobs.finished_since(time.time() - _DAY)
        report["last_day"] = {
            "recordings": recordings,
            "audio_seconds": round(audio, 1),
            "processing_seconds": round(busy, 1),
            "times_real_time": round(audio / busy, 1) if busy > 0 else None,
        }
        return report

    def job(self, job_id: int) -> Job:
        """Raises KeyError for a job that does not exist."""
        with self.jobs() as jobs:
            return jobs.get(job_id)

    def listing(
        self, folder: str | None, language: str | None, state: JobState | None
    ) -> list[Listed]:
        """The newest jobs, filtered: folder '' is the inbox's top level."""
        languages = self.languages()
        with self.jobs() as jobs:
            rows = jobs.listing(state, LISTED)
        listed = [
            Listed(
                job,
                display_name(os.path.basename(job.relpath)),
                _folder(job),
                languages.get(job.id),
            )
            for job in rows
            if job.state != JobState.CLAIMING
        ]
        return [
            row
            for row in listed
            if (folder is None or row.folder == folder)
            and (language is None or row.language == language)
        ]

    def job_since(self, relpath: bytes, since: float) -> Job | None:
        """The job the daemon made for a file put into the inbox at `since`: the first one
        with this inbox path created then or later (ids are reused after a retry, times not)."""
        if not self.settings.database.is_file():
            return None
        with closing(self._raw()) as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE relpath = ? AND created >= ? ORDER BY created LIMIT 1",
                (relpath, since),
            ).fetchone()
        return self.job(int(row[0])) if row else None

    def _raw(self) -> sqlite3.Connection:
        uri = f"{self.settings.database.absolute().as_uri()}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=30)

    def output(self, job: Job, extension: str) -> tuple[int, str]:
        """(descriptor, file name) of the job's transcript in one format."""
        for recorded in job.outputs:
            if recorded.endswith(f".{extension}"):
                return open_below(self.settings.outbox, recorded), os.path.basename(recorded)
        raise NotAvailable(f"job {job.id} has no .{extension} transcript")

    def formats(self, job: Job) -> list[str]:
        return [f for f in FORMATS if any(out.endswith(f".{f}") for out in job.outputs)]

    def transcript(self, job: Job) -> dict[str, Any]:
        """The job's published JSON."""
        fd, _name = self.output(job, "json")
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(_MAX_TRANSCRIPT_BYTES + 1)
        if len(raw) > _MAX_TRANSCRIPT_BYTES:
            raise NotAvailable(f"job {job.id}'s transcript is too large to show")
        try:
            data = json.loads(raw)
        except ValueError:
            raise NotAvailable(f"job {job.id}'s transcript is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
            raise NotAvailable(f"job {job.id}'s JSON is not a transcript")
        return data

    def original(self, job: Job) -> int:
        """The recording itself, while it is in the archive (disposal = move)."""
        archive = self.settings.archive_dir
        if job.state != JobState.DONE or archive is None or not job.disposed_to:
            raise NotAvailable(f"job {job.id}'s recording is not in the archive")
        return open_below(archive, job.disposed_to)

    def has_original(self, job: Job) -> bool:
        try:
            os.close(self.original(job))
        except NotAvailable:
            return False
        return True


def _folder(job: Job) -> str:
    return display_name(os.path.dirname(job.relpath))


def paragraphs(data: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The transcript's paragraphs as the .txt has them: (the speaker label it starts with,
    or None; its text), by the outbox's own rule."""
    return txt_paragraphs(
        Segment(
            start=shown["start"],
            end=shown["end"],
            text=shown["text"],
            language=shown["language"],
            pause_before=shown["pause_before"],
            speaker=shown["speaker"],
        )
        for shown in segments(data)
    )


def segments(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON's segments with the fields the page shows, typed (a JSON file is input)."""
    shown = []
    for index, raw in enumerate(data.get("segments") or []):
        if not isinstance(raw, dict):
            continue
        words = [
            {"text": str(w.get("text", "")), "start": _number(w.get("start"))}
            for w in raw.get("words") or []
            if isinstance(w, dict)
        ]
        shown.append(
            {
                "index": index,
                "start": _number(raw.get("start")),
                "end": _number(raw.get("end")),
                "text": str(raw.get("text") or ""),
                "language": _text(raw.get("language")),
                "speaker": _text(raw.get("speaker")),
                "pause_before": _number(raw.get("pause_before")),
                "no_speech": bool(raw.get("no_speech")),
                "truncated": bool(raw.get("truncated")),
                "words": words,
            }
        )
    return shown


def language_card(data: dict[str, Any]) -> dict[str, Any]:
    """Main language, its confidence, each language's share, and whether it was forced."""
    shares = data["languages"] if isinstance(data.get("languages"), dict) else {}
    return {
        "language": _text(data.get("language")),
        "confidence": _number_or_none(data.get("language_confidence")),
        "shares": [
            (str(code), _number(share)) for code, share in shares.items() if isinstance(code, str)
        ],
        "forced": bool(data.get("language_forced")),
        "status": _text(data.get("status")),
        "duration": _number(data.get("duration")),
    }


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
