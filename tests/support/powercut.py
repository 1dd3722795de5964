"""A power-cut campaign: the real daemon with every folder on a disk whose power is cut
(support/powerfs.py), a seeded schedule of drops and cuts, and an accounting after each
cut and at the end.

Each cut is aimed at a moment (a named filesystem operation: a claim's rename, a transcript's
link into the outbox, an original's link into the archive, a write to SQLite's WAL, …, see
MOMENTS), or falls at a random time. The power goes right after that operation; every process
using the disk is killed; the disk comes back with only what was durable; the disk is checked
with the daemon down; the daemon is started again.

Recordings are dropped by a careful copier (support/copier.py: temp name, fsync, rename, fsync
the folder) and count as dropped once it reported them durable. The one it was copying when
the power went may or may not be there afterwards: the disk decides, and it counts if it is.

Checked after every cut (the disk as a machine finds it on boot) and at the end:
- lost / duplicated: each dropped recording's content is in exactly as many files (inodes:
  a hard link mid-move is one file) as it was dropped, in the inbox, the work folder, the
  archive or the failed folder (the policy is `move`);
- no transcript is partial, none names content that was not dropped or a name it was not
  dropped under, none is doubled, and an archived original has its transcript (I1);
- the job database agrees with the disk (`status` is true to it): every live job's original
  is in the work folder, every file there has a job, every done job's transcript exists and
  its original is where the job says, every failed one has its reason; `status` counts
  what the database holds.
At the end, after the backlog drained: nothing stranded in the inbox or the work folder, each
recording transcribed once under its own name (not audio: failed with a reason).
"""

import contextlib
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Folders
from support.invariants import visible_transcripts
from support.powerfs import PowerFS
from support.recordings import write_soundfile
from support.running import Daemon, cli
from transcribed.files.names import REASON_SUFFIX
from transcribed.state.queue import IN_WORK_FOLDER, Job, JobQueue, JobState
from transcribed.state.workfolder import WORK_FOLDER_NAME

COPIER = Path(__file__).with_name("copier.py")
WORK = "inbox/" + re.escape(WORK_FOLDER_NAME)
FINAL_NAME = r"(.*/)?[^./][^/]*$"  # not one of our hidden temp names

# moment -> (operation, pattern of its subject, the most occurrences to wait for)
MOMENTS: dict[str, tuple[str, str, int]] = {
    "claim.renamed": ("rename", rf"^inbox/(?!{WORK}/).*->{WORK}/", 2),
    "claim.fsynced": ("fsyncdir", rf"^{WORK}$", 3),
    "publish.written": ("write", r"^outbox/(.*/)?\.[^/]*\.tmp$", 4),
    "publish.linked": ("link", rf"^outbox/{FINAL_NAME}", 2),
    "publish.replaced": ("rename", rf"->outbox/{FINAL_NAME}", 2),
    "publish.fsynced": ("fsyncdir", r"^outbox", 2),
    "disposal.linked": ("link", r"^archive/", 2),
    "disposal.fsynced": ("fsyncdir", r"^archive", 2),
    "disposal.unlinked": ("unlink", rf"^{WORK}/[^.]", 2),
    "failed.moved": ("link", r"^failed/", 1),
    "commit.written": ("write", r"^state/jobs\.sqlite3-wal$", 40),
    "commit.synced": ("fsync", r"^state/jobs\.sqlite3-wal$", 20),
    "checkpoint": ("write", r"^state/jobs\.sqlite3$", 3),
    "drop.copying": ("write", r"\.copying$", 2),
    "drop.renamed": ("rename", r"\.copying->", 1),
    "random": ("", "", 0),
}
# With the archive on a disk of its own, originals are copied there (a hidden temp, fsynced,
# linked to its name), not linked.
COPY_MOMENTS = {"disposal.copied": ("write", r"^archive/(.*/)?\.[^/]*\.tmp$", 3)}
TEAMS = 3  # subfolders of the inbox
AIM_SECONDS = 8.0  # an aimed cut that has not happened by then falls at once ("unaimed")


@dataclass(frozen=True)
class Drop:
    relpath: str  # below the inbox
    sha256: str
    junk: bool = False

    @property
    def name(self) -> str:
        return os.path.basename(self.relpath)


@dataclass
class Tally:
    recordings: int = 0  # durable drops
    vanished: int = 0  # drops cut before they were durable, and gone (as they may be)
    survived: int = 0  # drops cut before they were reported durable, and there
    cuts: Counter[str] = field(default_factory=Counter)  # by moment
    unaimed: int = 0  # aimed cuts that fell at the end of their wait instead
    killed: int = 0  # processes killed by the cuts
    seconds: float = 0.0

    def line(self) -> str:
        moments = ", ".join(f"{name} {count}" for name, count in sorted(self.cuts.items()))
        return (
            f"{self.recordings} recordings, {sum(self.cuts.values())} power cuts ({moments};"
            f" {self.unaimed} of them fell after waiting {AIM_SECONDS:.0f} s for their moment),"
            f" {self.killed} processes killed; drops cut short: {self.survived} there,"
            f" {self.vanished} gone; {self.seconds / 60:.1f} min"
        )


class Copier:
    """support/copier.py as a child process; a cut kills it, `restart` starts another."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self.started: list[str] = []
        self.durable: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, str(COPIER), str(self.inbox)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            verb, _, relpath = line.rstrip("\n").partition(" ")
            (self.durable if verb == "durable" else self.started).append(relpath)

    def send(self, source: Path, relpath: str) -> None:
        """Hand one copy over; a copier that died with the power never begins it."""
        assert self._process is not None and self._process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._process.stdin.write(f"{source}\t{relpath}\n")
            self._process.stdin.flush()

    def wait_durable(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.durable) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.durable) >= count

    def stop(self) -> None:
        """After a cut (it was killed) or at the end: reap it and its output."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert self._reader is not None
        self._reader.join(10)
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]


class Campaign:
    """`archive_disk`: the archive on a second disk (the power goes on both at once)."""

    def __init__(
        self,
        disk: PowerFS,
        model: Path,
        scratch: Path,
        seed: int,
        archive_disk: PowerFS | None = None,
    ) -> None:
        self.disk = disk
        self.disks = [disk] if archive_disk is None else [disk, archive_disk]
        self.moments = MOMENTS if archive_disk is None else MOMENTS | COPY_MOMENTS
        self.rng = random.Random(seed)
        self.scratch = scratch
        self.staging = scratch / "staging"
        self.staging.mkdir(parents=True)
        self.log = scratch / "daemon.log"
        self.folders = Folders(
            *(disk.root / name for name in ("inbox", "outbox", "archive", "failed", "state"))
        )
        self.folders.archive = self.disks[-1].root / "archive"
        for folder in vars(self.folders).values():
            folder.mkdir()
        for team in range(TEAMS):  # a share's folders, there before the daemon's first start
            (self.folders.inbox / f"team {team}").mkdir()
        for each in self.disks:
            each.sync()  # the folders were there long before
        self.env = self.folders.env(
            model,
            TRANSCRIBED_SETTLE_SECONDS="0.3",
            TRANSCRIBED_RETRY_SECONDS="0.3",
            TRANSCRIBED_RESCAN_SECONDS="3",
            TRANSCRIBED_JOBS_AT_ONCE="2",
            TRANSCRIBED_MAX_ATTEMPTS="1000",  # cuts are not the files' fault
            TRANSCRIBED_STALLED_SECONDS="30",
            # The disk is FUSE, whose writers the daemon treats as unseen; the campaign's
            # copier is careful (a hidden temp name renamed when complete), so no wait is due.
            TRANSCRIBED_SETTLE_SECONDS_UNSEEN="0.3",
        )
        self.dropped: list[Drop] = []
        self.sent: dict[str, Drop] = {}  # relpath -> drop handed to the copier, not durable yet
        self.tally = Tally()
        self.daemon: Daemon | None = None
        self.copier = Copier(self.folders.inbox)

    # --- the schedule -------------------------------------------------------------------

    def run(self, recordings: int, cuts: int) -> Tally:
        started = time.monotonic()
        self._start()
        try:
            for index in range(cuts):
                share = -(-(recordings - self.tally.recordings - len(self.sent)) // (cuts - index))
                self._cut_once(self.rng.randint(0, 2 * max(0, share)))
            while self.tally.recordings < recordings:  # what the cuts left undropped
                self._send(recordings - self.tally.recordings - len(self.sent))
                self.copier.wait_durable(len(self.copier.durable) + len(self.sent), 60)
                self._settle_sent()
            self._drain()
        finally:
            self._stop()
            self.tally.seconds = time.monotonic() - started
        return self.tally

    def _start(self) -> None:
        self.copier.start()
        self.daemon = Daemon(self.env, self.log)
        self.daemon.wait_ready(120)

    def _stop(self) -> None:
        self.copier.stop()
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.stop_cleanly()

    def _cut_once(self, drops: int) -> None:
        moment = self.rng.choice(list(self.moments))
        operation, pattern, most = self.moments[moment]
        aimed = self.disks[-1] if pattern.startswith("^archive") else self.disk
        if moment != "random":
            aimed.arm(operation, pattern, self.rng.randint(1, most))
        self._send(drops)
        if moment == "random":
            time.sleep(self.rng.uniform(0.0, 3.0))
        elif not self._moment_came(aimed):
            self.tally.unaimed += 1
        for each in self.disks:  # the power goes everywhere (if not gone already)
            each.ask("cut")
            each.disarm()
        self.tally.cuts[moment] += 1
        self.tally.killed += sum(each.reboot() for each in self.disks)
        assert self.daemon is not None
        self.daemon.process.wait(10)  # killed by the cut
        self.copier.stop()
        self._settle_sent()
        self.check()
        self._start()

    def _moment_came(self, aimed: PowerFS) -> bool:
        """Wait for the aimed cut; halfway, drop one more (most moments need a recording in
        flight)."""
        if aimed.wait_fired(AIM_SECONDS / 2):
            return True
        self._send(1)
        return aimed.wait_fired(AIM_SECONDS / 2)

    # --- drops --------------------------------------------------------------------------

    def _send(self, count: int) -> None:
        for _ in range(count):
            drop, source = self._make(len(self.dropped) + len(self.sent))
            self.sent[drop.relpath] = drop
            self.copier.send(source, drop.relpath)

    def _make(self, number: int) -> tuple[Drop, Path]:
        kind = self.rng.choices(["new", "copy", "junk", "nested"], [10, 2, 1, 3])[0]
        earlier = [d for d in self.dropped if not d.junk]
        folder = f"team {number % TEAMS}/" if kind == "nested" else ""
        if kind == "copy" and earlier:  # the same content under another name
            source = self._library(self.rng.choice(earlier).sha256)
            return Drop(f"copy {number}.wav", source.name), source
        if kind == "junk":
            path = self.staging / f"notes {number}.mp3"
            path.write_text(f"minutes of meeting {number}, not audio\n" * 40)
        else:
            seconds = self.rng.choice([0.3, 0.6, 1.0, 2.0])
            path = write_soundfile(self.staging / f"rec {number}.wav", seconds, 16000, "PCM_16")
            path.write_bytes(path.read_bytes() + number.to_bytes(4, "little"))  # unique
        sha = _digest(path)
        source = path.rename(self.staging / sha)
        return Drop(f"{folder}{path.name}", sha, junk=kind == "junk"), source

    def _library(self, sha: str) -> Path:
        return self.staging / sha

    def _settle_sent(self) -> None:
        """After a cut or a wait: drops reported durable count; the one being copied when
        the power went counts if the disk kept it (by its content's copies: nothing under
        `move` removes one); the others never began."""
        for relpath in self.copier.durable:
            self.dropped.append(self.sent.pop(relpath))
            self.tally.recordings += 1
        begun = [r for r in self.copier.started if r in self.sent]
        self.copier.durable.clear()
        self.copier.started.clear()
        for relpath in begun:
            drop = self.sent.pop(relpath)
            expected = sum(d.sha256 == drop.sha256 for d in self.dropped)
            if self._copies(self._originals(), self._jobs()[0])[drop.sha256] > expected:
                self.dropped.append(drop)
                self.tally.recordings += 1
                self.tally.survived += 1
            else:
                self.tally.vanished += 1
        self.sent.clear()
        for temp in self.folders.inbox.rglob("*.copying"):  # as the copier would, restarted
            temp.unlink()

    # --- the checks ---------------------------------------------------------------------

    def _originals(self) -> dict[str, set[tuple[int, int]]]:
        """sha256 -> the files (device, inode) holding it in the inbox (work folder
        included), the archive and the failed folder."""
        found: dict[str, set[tuple[int, int]]] = {}
        for root in (self.folders.inbox, self.folders.archive, self.folders.failed):
            for path in _files(root):
                if path.name.endswith((REASON_SUFFIX, ".copying", ".tmp")):
                    continue
                info = path.stat()
                found.setdefault(_digest(path), set()).add((info.st_dev, info.st_ino))
        return found

    def _jobs(self) -> tuple[list[Job], dict[str, int]]:
        """Every job and the count per state, read as the daemon reads them."""
        jobs = JobQueue(self.folders.state / "jobs.sqlite3")
        try:
            return jobs.listing(limit=1 << 30), jobs.counts()
        finally:
            jobs.close()

    def _copies(self, originals: dict[str, set[tuple[int, int]]], rows: list[Job]) -> Counter[str]:
        """sha256 -> how many drops its files stand for: one each, less a move to another
        disk that the cut left half done (copied there, not yet removed here)."""
        found = Counter({sha: len(files) for sha, files in originals.items()})
        work = self.folders.inbox / WORK_FOLDER_NAME
        found.subtract(job.sha256 for job in rows if _copied_not_yet_removed(job, work))
        return found

    def check(self) -> None:
        """The disk as a machine finds it after the cut, the daemon down."""
        rows, counts = self._jobs()
        originals = self._originals()
        expected = Counter(d.sha256 for d in self.dropped)
        found = self._copies(originals, rows)
        names = {d.sha256: d.relpath for d in self.dropped}
        lost = {names[sha]: n for sha, n in (expected - found).items()}
        doubled = {names.get(sha, sha): n for sha, n in (found - expected).items()}
        assert not lost and not doubled, f"lost {lost}, duplicated {doubled}"
        self._check_transcripts(originals)
        self._check_database(rows, counts)

    def _check_transcripts(self, originals: dict[str, set[tuple[int, int]]]) -> None:
        transcripts = visible_transcripts(self.folders.outbox)  # none partial
        dropped_as = {(d.name, d.sha256) for d in self.dropped}
        named = Counter(
            (source["name"], source["sha256"])
            for paths in transcripts.values()
            for source in (json.loads(path.read_bytes())["source"] for path in paths)
        )
        assert set(named) <= dropped_as, f"transcripts of no drop: {set(named) - dropped_as}"
        assert all(n == 1 for n in named.values()), f"doubled transcripts: {named}"
        archived = {_digest(path) for path in _files(self.folders.archive)}
        assert archived <= set(transcripts), "I1: an original archived without its transcript"
        assert set(transcripts) <= set(originals), "a transcript of content that is nowhere"

    def _check_database(self, rows: list[Job], counts: dict[str, int]) -> None:
        """`status` is true to the disk: the database (read as the daemon reads it) agrees
        with the folders, and `status` with the database."""
        work = self.folders.inbox / WORK_FOLDER_NAME
        present = set(os.listdir(work)) if work.exists() else set()
        owned = {j.work_name for j in rows if j.state in (JobState.CLAIMING, *IN_WORK_FOLDER)}
        strays = {name for name in present if not name.startswith(".")} - owned
        assert not strays, f"work files no job owns: {strays}"
        for job in rows:
            assert _agrees(job, work, self.folders), f"job {job} disagrees with the disk"
        report = _status(self.env)
        assert report["counts"] == counts, (report["counts"], counts)

    def _drain(self, timeout: float = 900) -> None:
        daemon = self.daemon
        assert daemon is not None
        work = self.folders.inbox / WORK_FOLDER_NAME
        busy = {"queued", "running", "claiming", "published", "duplicate"}

        def settled() -> bool:
            if _files(self.folders.inbox, hidden=False):
                return False
            report = _status(self.env)
            return not busy & report["counts"].keys() and not report["waiting"]

        daemon.wait_for(settled, timeout)
        assert not [n for n in os.listdir(work) if not n.startswith(".")]

    def check_final(self) -> None:
        """After the drain: every recording transcribed once under its own name and archived
        (not audio: failed with its reason), nothing stranded, `status` true to the disk."""
        self.check()
        stranded = _files(self.folders.inbox, hidden=False)
        assert not stranded, f"stranded: {stranded}"
        failed = {
            _digest(p) for p in _files(self.folders.failed) if not p.name.endswith(REASON_SUFFIX)
        }
        archived = {_digest(p) for p in _files(self.folders.archive)}
        transcripts = visible_transcripts(self.folders.outbox)
        named = {
            (source["name"], source["sha256"])
            for paths in transcripts.values()
            for source in (json.loads(path.read_bytes())["source"] for path in paths)
        }
        for drop in self.dropped:
            if drop.junk:
                assert drop.sha256 in failed, f"{drop.relpath}: not audio, and not failed"
            else:
                assert (drop.name, drop.sha256) in named, f"{drop.relpath}: no transcript"
                assert drop.sha256 in archived, f"{drop.relpath}: not archived"
        assert set(transcripts) <= archived, "a transcript of content not archived"
        report = _status(self.env)
        assert set(report["counts"]) <= {"done", "failed"} and report["waiting"] == []


def _agrees(job: Job, work: Path, folders: Folders) -> bool:
    """One job row against the disk."""
    original = work / job.work_name
    here = os.path.lexists(original)
    moved_to = Path(job.disposed_to) if job.disposed_to else None
    if job.state == JobState.CLAIMING:
        return True  # the next start finishes or forgets it
    # Moved away by a disposal or a quarantine the cut interrupted before its commit: the
    # next start finishes it (a quarantine then says "vanished", see the README).
    moving = job.disposal_started is not None and _holds(moved_to, job)
    if job.state in (JobState.QUEUED, JobState.RUNNING, JobState.DUPLICATE):
        return here or moving
    if job.state == JobState.FAILED:
        assert moved_to is not None
        return os.path.exists(f"{moved_to}{REASON_SUFFIX}")
    published = all(os.path.exists(path) for path in job.outputs)
    if job.state == JobState.PUBLISHED:
        return published and (here or moving)
    assert job.state == JobState.DONE
    return published and not here and _holds(moved_to, job)


def _copied_not_yet_removed(job: Job, work: Path) -> bool:
    """A move to another disk cut between the copy and the removal: two files, one drop."""
    original = work / job.work_name
    if job.disposal_started is None or not job.disposed_to or not original.exists():
        return False
    copy = Path(job.disposed_to)
    return not os.path.samefile(original, copy) if _holds(copy, job) else False


def _holds(path: Path | None, job: Job) -> bool:
    return path is not None and path.is_file() and _digest(path) == job.sha256


def _files(root: Path, hidden: bool = True) -> list[Path]:
    """Regular files below `root` (hidden ones too unless `hidden` is False: then neither
    dotfiles nor anything in the work folder)."""
    found = []
    for folder, subfolders, names in os.walk(root):
        if not hidden:
            subfolders[:] = [s for s in subfolders if not s.startswith(".")]
            names = [n for n in names if not n.startswith(".")]
        found += [Path(folder, name) for name in names]
    return found


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _status(env: dict[str, str]) -> dict:
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
