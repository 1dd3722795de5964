"""Full-text search over published transcripts: SQLite FTS5, one row per segment.

The index is a cache of the outbox: the daemon adds each transcript as it publishes it, and
`rebuild` makes it again from the published JSON files at any time, so losing or deleting it
loses nothing. It lives in its own file beside the job database.

FTS5's `unicode61` tokenizer does not split Chinese or Japanese into words, so the segments are
indexed with the `trigram` tokenizer: any run of 3 or more characters is found in any script.
Shorter terms (a 2-character Chinese word such as 预算) fall back to LIKE over the same table.
A query's terms must all occur in a transcript (not necessarily in one segment); every segment
holding any of them is a hit.

A damaged index repairs itself: whoever meets it (the daemon at start, the page, `transcribed
search`) sets the file aside (renamed, never deleted) and builds it anew from the outbox, one
process at a time (a lock file beside it). A rebuild marks the file as unfinished until its
last transcript is in, so one cut short is finished by the next that looks.
"""

import enum
import fcntl
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcribed.files.names import display_name
from transcribed.logs import get_logger

log = get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transcripts (
    doc       INTEGER PRIMARY KEY,
    json_path BLOB NOT NULL UNIQUE,  -- raw bytes: names need not be UTF-8
    job_id    INTEGER,               -- NULL when rebuilt from a file no job row names
    name      TEXT NOT NULL,         -- the recording's name, for display
    language  TEXT,
    duration  REAL
);
CREATE VIRTUAL TABLE IF NOT EXISTS segments USING fts5(
    text, start UNINDEXED, end UNINDEXED, tokenize = 'trigram'
);
"""
# A segment's rowid is its transcript's doc shifted left plus its index: a transcript's
# segments are one rowid range, removed without scanning the whole table.
_SEGMENT_BITS = 20
TRIGRAM = 3  # the shortest term the trigram index can answer by itself
_MAX_JSON_BYTES = 64 * 1024 * 1024
_ROWS_PER_TERM = 5000
_BUILDING = 1  # PRAGMA user_version while a rebuild runs; 0 (any index before it) when done


class IndexDamaged(sqlite3.DatabaseError):
    """SQLite says the index file is not a sound database (it is then set aside and rebuilt)."""


class IndexState(enum.Enum):
    MISSING = "missing"
    DAMAGED = "damaged"
    UNFINISHED = "unfinished"  # a rebuild is running, or was cut short
    SOUND = "sound"


def is_damaged(error: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB, extended codes included (FTS5's CORRUPT_VTAB)."""
    code = getattr(error, "sqlite_errorcode", None) or 0
    return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


@dataclass(frozen=True)
class Hit:
    """One segment that holds a searched term."""

    job_id: int | None
    name: str
    language: str | None
    start: float
    end: float
    text: str
    segment: int  # its index in the transcript's segments
    json_path: str  # the transcript it comes from


class SearchIndex:
    """The index file. Each call opens its own connection, so any thread may use one."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self._read_only = read_only

    @contextmanager
    def _connect(self, *, read_only: bool | None = None) -> Iterator[sqlite3.Connection]:
        """A connection for one call; IndexDamaged when SQLite finds the file unsound."""
        try:
            connection = self._open(self._read_only if read_only is None else read_only)
            with closing(connection):
                yield connection
        except sqlite3.DatabaseError as error:
            if is_damaged(error) and not isinstance(error, IndexDamaged):
                raise IndexDamaged(f"the search index {self.path} is damaged: {error}") from error
            raise

    def _open(self, read_only: bool) -> sqlite3.Connection:
        if read_only:
            uri = f"{self.path.absolute().as_uri()}?mode=ro"
            return sqlite3.connect(uri, uri=True, timeout=30)
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            # A cache: losing the last commits to a power cut costs a rebuild, not data.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def state(self) -> IndexState:
        """Whether the index can be used as it is: a quick look (the schema and a row of each
        table), not a full integrity check; deeper damage is found when a search meets it."""
        if not self.path.exists():
            return IndexState.MISSING
        try:
            with self._connect(read_only=True) as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                db.execute("SELECT doc FROM transcripts LIMIT 1").fetchall()
                db.execute("SELECT rowid, text FROM segments LIMIT 1").fetchall()
        except IndexDamaged:
            return IndexState.DAMAGED
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):  # a file with no index in it yet
                return IndexState.UNFINISHED
            raise
        return IndexState.UNFINISHED if version == _BUILDING else IndexState.SOUND

    def repair(self, outbox: Path, database: Path) -> int | None:
        """When the index is damaged, unfinished or missing: set a damaged one aside and build
        it anew from `outbox` (job ids from the job `database`). Returns how many transcripts
        were indexed, 0 when it needed nothing, None when another process is at it."""
        with self._exclusive(wait=False) as mine:
            if not mine:
                return None
            state = self.state()
            if state is IndexState.SOUND:
                return 0
            if state is IndexState.DAMAGED:
                self._set_aside()
            return self._refill(outbox, published_job_ids(database))

    @contextmanager
    def _exclusive(self, *, wait: bool) -> Iterator[bool]:
        """One rebuild at a time across processes: an flock on a file beside the index."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def rebuilding_elsewhere(self) -> bool:
        """True while some process (this one included) holds the rebuild lock."""
        try:
            with self._exclusive(wait=False) as mine:
                return not mine
        except OSError:
            return False

    def _set_aside(self) -> Path:
        """Rename the damaged file (and its WAL) out of the way: kept, never deleted."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        number = 1
        while aside.exists():
            number += 1
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{number}")
        os.replace(self.path, aside)
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + "-wal"))
        self.path.with_name(self.path.name + "-shm").unlink(missing_ok=True)
        log.warning(
            "search.index_set_aside",
            file=str(aside),
            hint="the search index was damaged; it is being rebuilt from the outbox",
        )
        return aside

    def add(self, json_path: Path, job_id: int | None) -> None:
        """Index the published transcript at `json_path` (replacing an older copy of it)."""
        transcript = _read_transcript(json_path)
        with self._connect() as db, db:
            self._insert(db, json_path, job_id, transcript)

    def add_published(self, outputs: Sequence[Path], job_id: int) -> None:
        """The daemon's call after publishing: index the JSON among `outputs`. Never raises:
        the transcript is already safe, and a rebuild catches up on anything missed."""
        try:
            json_path = next(path for path in outputs if path.suffix == ".json")
            self.add(json_path, job_id)
        except (StopIteration, OSError, ValueError, sqlite3.Error) as error:
            log.warning(
                "search.not_indexed",
                job=job_id,
                error=f"{type(error).__name__}: {error}",
                hint="`transcribed search --rebuild` brings the index up to date",
            )

    def forget_retracted(self, removed: Sequence[Path]) -> None:
        """The daemon's call after taking a transcript back (its job failed for good): its
        passages are no longer found. Never raises, as `add_published`."""
        for json_path in (path for path in removed if path.suffix == ".json"):
            try:
                self.remove(json_path)
            except sqlite3.Error as error:
                log.warning("search.not_forgotten", path=str(json_path), error=str(error))

    def remove(self, json_path: Path) -> bool:
        """Forget one transcript; False when it was not indexed."""
        with self._connect() as db, db:
            return self._delete(db, os.fsencode(json_path))

    def rebuild(self, outbox: Path, job_ids: dict[bytes, int]) -> int:
        """Index every published transcript below `outbox` anew (a damaged file is set aside
        first); `job_ids` maps JSON paths (bytes) to their jobs. Returns how many transcripts
        were indexed. Waits while another process rebuilds it."""
        with self._exclusive(wait=True):
            if self.state() is IndexState.DAMAGED:
                self._set_aside()
            return self._refill(outbox, job_ids)

    def _refill(self, outbox: Path, job_ids: dict[bytes, int]) -> int:
        """Empty the index and add every transcript, each in its own transaction, so the
        daemon's own additions never wait long; marked unfinished until the last is in."""
        count = 0
        with self._connect(read_only=False) as db:
            db.execute(f"PRAGMA user_version = {_BUILDING}")
            with db:
                db.execute("DELETE FROM segments")
                db.execute("DELETE FROM transcripts")
            for json_path in _published_json(outbox):
                try:
                    transcript = _read_transcript(json_path)
                except (OSError, ValueError):
                    continue  # not one of ours, or unreadable: nothing to find in it
                with db:
                    self._insert(db, json_path, job_ids.get(os.fsencode(json_path)), transcript)
                count += 1
            db.execute("PRAGMA user_version = 0")
        log.info("search.index_rebuilt", transcripts=count)
        return count

    def search(self, query: str, limit: int = 200) -> list[Hit]:
        """Segments holding any term of `query`, in transcripts that hold every term; the
        newest transcripts first, then in time order."""
        terms = query_terms(query)
        if not terms or not self.path.exists():
            return []
        with self._connect() as db:
            per_term = [_segments_with(db, term) for term in terms]
            in_docs = [{rowid >> _SEGMENT_BITS for rowid in rows} for rows in per_term]
            docs = set.intersection(*in_docs)
            rowids = sorted(
                {rowid for rows in per_term for rowid in rows if rowid >> _SEGMENT_BITS in docs},
                key=lambda rowid: (-(rowid >> _SEGMENT_BITS), rowid),
            )[:limit]
            return [_hit(db, rowid) for rowid in rowids]

    def known_jobs(self) -> dict[int, str | None]:
        """Every indexed job and its main language: the page's language filter."""
        if not self.path.exists():
            return {}
        with self._connect() as db:
            rows = db.execute("SELECT job_id, language FROM transcripts WHERE job_id IS NOT NULL")
            return {int(job): language for job, language in rows}

    def _insert(
        self, db: sqlite3.Connection, json_path: Path, job_id: int | None, data: dict[str, Any]
    ) -> None:
        raw = os.fsencode(json_path)
        self._delete(db, raw)
        source = data["source"] if isinstance(data.get("source"), dict) else {}
        cursor = db.execute(
            "INSERT INTO transcripts (json_path, job_id, name, language, duration)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                raw,
                job_id,
                display_name(str(source.get("name") or json_path.stem)),
                _text_or_none(data.get("language")),
                _number_or_none(data.get("duration")),
            ),
        )
        doc = cursor.lastrowid
        assert doc is not None
        db.executemany(
            "INSERT INTO segments (rowid, text, start, end) VALUES (?, ?, ?, ?)",
            (
                ((doc << _SEGMENT_BITS) + index, text, start, end)
                for index, (text, start, end) in enumerate(_segments(data))
            ),
        )

    @staticmethod
    def _delete(db: sqlite3.Connection, raw: bytes) -> bool:
        row = db.execute("SELECT doc FROM transcripts WHERE json_path = ?", (raw,)).fetchone()
        if row is None:
            return False
        first = row[0] << _SEGMENT_BITS
        db.execute(
            "DELETE FROM segments WHERE rowid BETWEEN ? AND ?",
            (first, first + (1 << _SEGMENT_BITS) - 1),
        )
        db.execute("DELETE FROM transcripts WHERE doc = ?", (row[0],))
        return True


def query_terms(query: str) -> list[str]:
    """The distinct whitespace-separated terms of a query, in order."""
    return list(dict.fromkeys(query.split()))


def _segments_with(db: sqlite3.Connection, term: str) -> set[int]:
    """The newest `_ROWS_PER_TERM` segments holding `term` (hits are shown newest first, so
    a common word's cap drops the oldest)."""
    if len(term) >= TRIGRAM:
        phrase = '"' + term.replace('"', '""') + '"'  # a literal substring, not FTS syntax
        rows = db.execute(
            "SELECT rowid FROM segments WHERE segments MATCH ? ORDER BY rowid DESC LIMIT ?",
            (phrase, _ROWS_PER_TERM),
        )
    else:
        pattern = "%" + re.sub(r"([%_\\])", r"\\\1", term) + "%"
        rows = db.execute(
            "SELECT rowid FROM segments WHERE text LIKE ? ESCAPE '\\' ORDER BY rowid DESC LIMIT ?",
            (pattern, _ROWS_PER_TERM),
        )
    return {rowid for (rowid,) in rows}


def _hit(db: sqlite3.Connection, rowid: int) -> Hit:
    text, start, end = db.execute(
        "SELECT text, start, end FROM segments WHERE rowid = ?", (rowid,)
    ).fetchone()
    job_id, name, language, json_path = db.execute(
        "SELECT job_id, name, language, json_path FROM transcripts WHERE doc = ?",
        (rowid >> _SEGMENT_BITS,),
    ).fetchone()
    segment = rowid & ((1 << _SEGMENT_BITS) - 1)
    path = os.fsdecode(bytes(json_path))
    return Hit(job_id, name, language, float(start), float(end), text, segment, path)


def _read_transcript(json_path: Path) -> dict[str, Any]:
    """A transcript JSON the daemon wrote; ValueError for anything else."""
    fd = os.open(json_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ValueError(f"{display_name(str(json_path))} is too large to be a transcript")
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ValueError(f"{display_name(str(json_path))} is not a transcript")
    return data


def _segments(data: dict[str, Any]) -> Iterable[tuple[str, float, float]]:
    for segment in data["segments"][: 1 << _SEGMENT_BITS]:
        if isinstance(segment, dict) and isinstance(segment.get("text"), str) and segment["text"]:
            yield (
                segment["text"],
                _number_or_none(segment.get("start")) or 0.0,
                _number_or_none(segment.get("end")) or 0.0,
            )


def _published_json(outbox: Path) -> Iterator[Path]:
    """Every visible .json file below the outbox; temp files (dot names) and symlinks skipped."""
    for folder, subfolders, files in os.walk(outbox):  # never enters symlinked folders
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if name.endswith(".json") and not name.startswith(".") and not path.is_symlink():
                yield path


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def published_job_ids(database: Path) -> dict[bytes, int]:
    """JSON path (bytes) -> job id, read from the job database without changing it."""
    if not database.exists():
        return {}
    uri = f"{database.absolute().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        rows = db.execute("SELECT id, outputs FROM jobs WHERE outputs IS NOT NULL").fetchall()
    found: dict[bytes, int] = {}
    for job_id, outputs in rows:
        for output in json.loads(outputs):
            if output.endswith(".json"):
                found[os.fsencode(output)] = int(job_id)
    return found


def render_hit(hit: Hit) -> str:
    """One hit for a terminal: job, recording, time, the segment's text (control characters
    escaped: a transcript is untrusted text)."""
    job = f"#{hit.job_id}" if hit.job_id is not None else "-"
    return f"{job:>6}  {hit.name}  {clock(hit.start)}  {display_name(hit.text)}"


def clock(seconds: float) -> str:
    """12.5 -> '0:12', 3725 -> '1:02:05'."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def highlight(text: str, terms: Sequence[str]) -> list[tuple[str, bool]]:
    """`text` in pieces, each marked True where it matches a term (any case): for showing
    hits, the page escaping every piece."""
    if not terms:
        return [(text, False)]
    longest_first = sorted(terms, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(term) for term in longest_first), re.IGNORECASE)
    pieces: list[tuple[str, bool]] = []
    last = 0
    for match in pattern.finditer(text):
        if match.start() > last:
            pieces.append((text[last : match.start()], False))
        pieces.append((match.group(), True))
        last = match.end()
    if last < len(text):
        pieces.append((text[last:], False))
    return pieces
