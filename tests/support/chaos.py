"""A chaos campaign: a seeded, reproducible random schedule of drops and faults against the
real daemon process, then an accounting of every byte dropped.

Faults: kill -9, SIGSTOP/SIGCONT, a second instance, the job database deleted or damaged
while stopped (then `transcribed recover`), the inbox renamed and a new one made (its old
work folder's recordings then moved back in, as the failure reason tells a user to), the
outbox or archive removed and restored, the outbox's disk full (a real tmpfs), and clock
jumps of ±400 days (faketime). Drops: recordings of many lengths, several with one stem,
the same content under other names, the same name and content again, and files that are
not audio.

After the schedule the daemon drains the backlog, and the disk is checked: every dropped
file's SHA-256 lies in exactly one place (archive, or failed folder with its reason); every
dropped name (with its content) has exactly one transcript, or (not audio) a failure reason;
nothing partial is visible; `status` agrees with the disk.
"""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Folders
from support.invariants import digest, visible_transcripts
from support.recordings import write_soundfile
from support.running import CLI, Daemon, cli
from transcribed.files.names import REASON_SUFFIX
from transcribed.state.workfolder import WORK_FOLDER_NAME, relpath_of

FAULTS = (
    "kill",
    "stop_cont",
    "second_instance",
    "database_deleted",
    "database_damaged",
    "inbox_replaced",
    "outbox_removed",
    "archive_removed",
    "disk_full",
    "clock_jump",
)


@dataclass
class Dropped:
    name: str
    sha256: str
    junk: bool = False


@dataclass
class Tally:
    recordings: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # faults this machine cannot make

    def line(self) -> str:
        done = ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items()))
        return f"{self.recordings} files dropped, {sum(self.faults.values())} faults ({done})"


class Campaign:
    def __init__(self, folders: Folders, model: Path, scratch: Path, seed: int) -> None:
        self.folders = folders
        self.rng = random.Random(seed)
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.staging = scratch / "staging"
        self.library = scratch / "library"  # every recording's bytes, by SHA-256
        for folder in (self.staging, self.library):
            folder.mkdir()
        self.log = scratch / "daemon.log"
        # The outbox on a small tmpfs of its own, so a disk can really fill up (needs root).
        self.disk = scratch / "disk"
        self.disk.mkdir()
        self._tmpfs = _mount_tmpfs(self.disk)
        if self._tmpfs:
            folders.outbox = self.disk / "outbox"
            folders.outbox.mkdir()
        self.env = folders.env(
            model,
            TRANSCRIBED_SETTLE_SECONDS="0.3",
            TRANSCRIBED_RETRY_SECONDS="0.3",
            TRANSCRIBED_RESCAN_SECONDS="3",
            TRANSCRIBED_JOBS_AT_ONCE="2",
            TRANSCRIBED_MAX_ATTEMPTS="100",  # faults are not the files' fault
            TRANSCRIBED_STALLED_SECONDS="30",
        )
        self.dropped: list[Dropped] = []
        self.tally = Tally()
        self.daemon: Daemon | None = None

    # --- the schedule ------------------------------------------------------------------

    def run(self, recordings: int, faults: int) -> Tally:
        """Each kind of fault at least once (when `faults` allows), the rest at random."""
        self._start()
        kinds = list(FAULTS)[:faults] + self.rng.choices(FAULTS, k=max(0, faults - len(FAULTS)))
        plan = ["drop"] * recordings + kinds
        self.rng.shuffle(plan)
        try:
            for step in plan:
                getattr(self, f"_{step}")()
                time.sleep(self.rng.uniform(0.0, 0.6))
            self._drain()
        finally:
            self._stop()
        return self.tally

    def close(self) -> None:
        """After `check`: the outbox's tmpfs goes (with the transcripts on it)."""
        if self._tmpfs:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)

    def _start(self) -> None:
        self.daemon = Daemon(self.env, self.log)
        self.daemon.wait_ready(120)

    def _stop(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is not None:
            daemon.stop_cleanly()

    def _alive(self) -> Daemon:
        assert self.daemon is not None
        assert self.daemon.process.poll() is None, f"the daemon died: {self.daemon.tail()}"
        return self.daemon

    # --- drops ------------------------------------------------------------------------

    def _drop(self) -> None:
        kind = self.rng.choices(
            ["new", "same_stem", "copy", "again", "junk", "long"], [10, 3, 3, 2, 1, 1]
        )[0]
        number = self.tally.recordings
        path = self._copied(kind, number) if kind in ("copy", "again") else None
        if path is None:
            path = self._made(kind, number)
        dropped = Dropped(path.name, digest(path), junk=kind == "junk")
        if not dropped.junk:
            shutil.copyfile(path, self.library / dropped.sha256)
        self.dropped.append(dropped)
        self.tally.recordings += 1
        os.rename(path, self.folders.inbox / path.name)

    def _made(self, kind: str, number: int) -> Path:
        if kind == "junk":
            path = self.staging / f"notes {number}.mp3"
            path.write_text("minutes of the meeting, not audio\n" * 50)
            return path
        if kind == "same_stem":  # meeting N.wav / .flac of other content, at the same time
            extension = self.rng.choice([".wav", ".flac"])
            name = f"meeting {number % 3}{extension}"
            if (self.folders.inbox / name).exists():
                name = f"meeting {number}{extension}"
        else:
            extension, name = ".wav", f"rec {number}.wav"
        seconds = 20.0 if kind == "long" else self.rng.choice([0.2, 0.5, 1.0, 2.0, 3.0])
        fmt = "FLAC" if extension == ".flac" else None
        return write_soundfile(self.staging / name, seconds, 16000, "PCM_16", fmt, seed=number)

    def _copied(self, kind: str, number: int) -> Path | None:
        """An earlier recording's bytes again: under a new name, or (again) under its own
        name, unless that name is still waiting in the inbox."""
        earlier = [d for d in self.dropped if not d.junk]
        if not earlier:
            return None
        source = self.rng.choice(earlier)
        name = source.name if kind == "again" else f"copy {number} of {source.name}"
        if (self.folders.inbox / name).exists():
            return None
        path = self.staging / name
        shutil.copyfile(self.library / source.sha256, path)
        return path

    # --- faults -----------------------------------------------------------------------

    def _count(self, fault: str) -> None:
        self.tally.faults[fault] += 1

    def _kill(self) -> None:
        self._alive().kill()
        self._count("kill")
        self._start()

    def _stop_cont(self) -> None:
        pid = self._alive().process.pid
        os.kill(pid, signal.SIGSTOP)
        time.sleep(self.rng.uniform(0.3, 2.0))
        os.kill(pid, signal.SIGCONT)
        self._count("stop_cont")

    def _second_instance(self) -> None:
        self._alive()
        second = subprocess.run(
            [*CLI, "run"], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2 and "already running" in second.stderr, second.stderr
        self._count("second_instance")

    def _database_deleted(self) -> None:
        self._stop()
        for part in self._database_files():
            part.unlink()
        self._count("database_deleted")
        self._start()

    def _database_damaged(self) -> None:
        self._stop()
        for part in self._database_files():
            part.unlink()
        (self.folders.state / "jobs.sqlite3").write_bytes(os.urandom(8192))
        refused = subprocess.run(
            [*CLI, "run"], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2 and "transcribed recover" in refused.stderr
        recovered = cli("recover", env=self.env)
        assert recovered.returncode == 0, recovered.stderr
        self._count("database_damaged")
        self._start()

    def _database_files(self) -> list[Path]:
        database = self.folders.state / "jobs.sqlite3"
        return [p for p in (Path(f"{database}{s}") for s in ("", "-wal", "-shm")) if p.exists()]

    def _inbox_replaced(self) -> None:
        """Renamed away and a new one made; a moment later the user moves the recordings
        left in the old one back in, as their failure reasons say."""
        self._alive()
        old = self.scratch / f"inbox.old.{self.tally.faults['inbox_replaced']}"
        self.folders.inbox.rename(old)
        self.folders.inbox.mkdir()
        time.sleep(self.rng.uniform(1.5, 4.0))
        for path in _files(old):
            relpath = path.relative_to(old)
            if relpath.parts[0] == WORK_FOLDER_NAME:
                relpath = Path(relpath_of(path.name))
            target = self.folders.inbox / relpath.name
            while target.exists():  # the same name dropped meanwhile: keep both
                target = target.with_name(f"again {target.name}")
                self._rename_drop(relpath.name, target.name)
            os.rename(path, target)
        shutil.rmtree(old)
        self._count("inbox_replaced")

    def _rename_drop(self, old_name: str, new_name: str) -> None:
        """A recording moved back under another name: account for it by that name."""
        for dropped in self.dropped:
            if dropped.name == old_name:
                self.dropped.append(Dropped(new_name, dropped.sha256, dropped.junk))
                self.dropped.remove(dropped)
                return

    def _outbox_removed(self) -> None:
        self._away_and_back(self.folders.outbox, "outbox_removed")

    def _archive_removed(self) -> None:
        self._away_and_back(self.folders.archive, "archive_removed")

    def _away_and_back(self, folder: Path, fault: str) -> None:
        aside = folder.with_name(folder.name + ".aside")
        folder.rename(aside)
        time.sleep(self.rng.uniform(0.5, 3.0))
        aside.rename(folder)
        self._count(fault)

    def _disk_full(self) -> None:
        if not self._tmpfs:
            self.tally.skipped["disk_full"] += 1
            return
        ballast = self.disk / ".ballast"
        with contextlib.suppress(OSError), ballast.open("wb") as handle:
            while True:
                handle.write(b"\0" * (1 << 20))
        time.sleep(self.rng.uniform(1.0, 3.0))
        ballast.unlink()
        self._count("disk_full")

    def _clock_jump(self) -> None:
        """A run with the clock 400 days off (libfaketime preloaded into the daemon itself),
        then one with the right time: waits stored under the wrong clock must not hold."""
        if _FAKETIME is None:
            self.tally.skipped["clock_jump"] += 1
            return
        self._stop()
        offset = self.rng.choice(["+400d", "-400d"])
        real = dict(self.env)
        self.env |= {
            "LD_PRELOAD": str(_FAKETIME),
            "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        try:
            self._start()
            time.sleep(self.rng.uniform(1.0, 3.0))
            self._stop()
        finally:
            self.env = real
        self._count("clock_jump")
        self._start()

    # --- the end ----------------------------------------------------------------------

    def _drain(self, timeout: float = 600) -> None:
        daemon = self._alive()
        work = self.folders.inbox / WORK_FOLDER_NAME
        busy = {"queued", "running", "claiming", "published", "duplicate"}

        def settled() -> bool:
            if _files(self.folders.inbox) or (work.exists() and any(work.iterdir())):
                return False
            report = _status(self.env)
            return not busy & report["counts"].keys() and not report["waiting"]

        daemon.wait_for(settled, timeout)

    def check(self) -> None:
        """The accounting, on the disk and against `status`."""
        folders = self.folders
        transcripts = visible_transcripts(folders.outbox)  # also: nothing partial visible
        # A name may be dropped again with other content: that is another recording.
        by_name = Counter(
            (source["name"], source["sha256"])
            for paths in transcripts.values()
            for source in (json.loads(path.read_bytes())["source"] for path in paths)
        )
        placed = Counter(digest(p) for p in _files(folders.archive))
        failed = [p for p in _files(folders.failed) if not p.name.endswith(REASON_SUFFIX)]
        placed.update(digest(p) for p in failed)
        expected = Counter(d.sha256 for d in self.dropped)
        (self.scratch / "dropped.json").write_text(
            json.dumps([vars(d) for d in self.dropped], indent=1)
        )
        names = {d.sha256: d.name for d in self.dropped}
        lost = {names[sha]: n for sha, n in (expected - placed).items()}
        doubled = {names.get(sha, sha): n for sha, n in (placed - expected).items()}
        assert not lost and not doubled, f"lost {lost}, doubled {doubled}"
        for path in failed:
            assert path.with_name(path.name + REASON_SUFFIX).is_file(), f"{path}: no reason"
        for dropped in self.dropped:
            found = by_name[dropped.name, dropped.sha256]
            if dropped.junk:
                assert found == 0, f"{dropped.name}: not audio, transcribed"
                assert any(p.name == dropped.name for p in failed), f"{dropped.name}: no reason"
            else:
                assert found == 1, f"{dropped.name}: {found} transcripts"
        self._check_status(transcripts)

    def _check_status(self, transcripts: dict[str, list[Path]]) -> None:
        report = _status(self.env)
        reasons = [p for p in _files(self.folders.failed) if p.name.endswith(REASON_SUFFIX)]
        assert report["counts"].get("failed", 0) == len(reasons), (report["counts"], reasons)
        assert set(report["counts"]) <= {"done", "failed"} and report["waiting"] == []
        listed = json.loads(
            cli("jobs", "list", "--limit", "1000000", "--json", env=self.env).stdout
        )
        referenced = {
            output
            for row in listed
            if row["state"] == "done"
            for output in row["outputs"]
            if output.endswith(".json")
        }
        on_disk = {str(path) for paths in transcripts.values() for path in paths}
        assert on_disk <= referenced, f"transcripts no job knows: {on_disk - referenced}"
        assert all(Path(path).exists() for path in referenced), "a done job's file is gone"


def _files(root: Path) -> list[Path]:
    return [
        Path(folder, name)
        for folder, _subfolders, names in os.walk(root)
        for name in names
        if not name.startswith(".")
    ]


def _status(env: dict[str, str]) -> dict:
    done = cli("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


_FAKETIME = next(
    (p for p in Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")), None
)  # Debian's libfaketime


def _mount_tmpfs(folder: Path) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0
