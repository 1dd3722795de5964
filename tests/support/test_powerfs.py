"""The power-cut disk (support/powerfs.py) itself: what a cut keeps and what it throws away,
and that the daemon's kinds of file use (hard links, renames across folders, O_EXCL, locks,
SQLite's WAL with its shared memory) work on it."""

import errno
import fcntl
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.powerfs import PowerFS, require_powerfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerFS]:
    require_powerfs()
    with PowerFS(tmp_path / "disk") as mounted:
        yield mounted


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, fsync: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def durable_file(disk: PowerFS, name: str, data: bytes) -> Path:
    """A file whose data and name are both durable."""
    path = disk.root / name
    write(path, data)
    fsync_dir(path.parent)
    return path


def test_data_written_after_the_last_fsync_is_lost(disk: PowerFS) -> None:
    """Appended bytes never fsynced go, size included; the fsynced part stays."""
    path = durable_file(disk, "a.wav", b"first")
    with path.open("ab") as handle:
        handle.write(b" and more")
    disk.cut()
    assert path.read_bytes() == b"first"


def test_an_fsynced_file_whose_name_was_never_made_durable_vanishes(disk: PowerFS) -> None:
    """fsync of a file keeps its data, not its directory entry."""
    write(disk.root / "new.wav", b"data", fsync=True)
    disk.cut()
    assert not (disk.root / "new.wav").exists()


def test_a_durable_name_without_fsynced_data_comes_back_empty(disk: PowerFS) -> None:
    write(disk.root / "empty.wav", b"data", fsync=False)
    fsync_dir(disk.root)
    disk.cut()
    assert (disk.root / "empty.wav").read_bytes() == b""


def test_a_rename_across_folders_not_fsynced_is_undone(disk: PowerFS) -> None:
    (disk.root / "inbox").mkdir()
    (disk.root / "work").mkdir()
    disk.sync()
    path = durable_file(disk, "inbox/a.wav", b"audio")
    path.rename(disk.root / "work" / "a.wav")
    disk.cut()
    assert (disk.root / "inbox" / "a.wav").read_bytes() == b"audio"
    assert not (disk.root / "work" / "a.wav").exists()


@pytest.mark.parametrize("fsynced", ["source", "target"])
def test_a_rename_is_durable_on_both_sides_once_either_folder_is_fsynced(
    disk: PowerFS, fsynced: str
) -> None:
    """One journalled operation: never in both folders, never in neither."""
    for name in ("source", "target"):
        (disk.root / name).mkdir()
    disk.sync()
    durable_file(disk, "source/a.wav", b"audio").rename(disk.root / "target" / "b.wav")
    fsync_dir(disk.root / fsynced)
    disk.cut()
    assert os.listdir(disk.root / "source") == []
    assert (disk.root / "target" / "b.wav").read_bytes() == b"audio"
    assert os.stat(disk.root / "target" / "b.wav").st_nlink == 1


def test_an_unlink_not_fsynced_is_undone_and_a_durable_one_kept(disk: PowerFS) -> None:
    (disk.root / "sub").mkdir()
    disk.sync()
    kept = durable_file(disk, "sub/kept.wav", b"kept")
    gone = durable_file(disk, "gone.wav", b"gone")
    kept.unlink()
    gone.unlink()
    fsync_dir(disk.root)
    kept.write_bytes(b"")  # a new file by the same name, never made durable
    disk.cut()
    assert kept.read_bytes() == b"kept" and not gone.exists()


def test_hard_links_count_and_survive_only_once_durable(disk: PowerFS) -> None:
    (disk.root / "archive").mkdir()
    disk.sync()
    original = durable_file(disk, "a.wav", b"audio")
    os.link(original, disk.root / "archive" / "a.wav")
    os.link(original, disk.root / "b.wav")
    assert os.stat(original).st_nlink == 3
    fsync_dir(disk.root / "archive")  # the second link's folder is never fsynced
    disk.cut()
    assert os.stat(original).st_nlink == 2
    assert (disk.root / "archive" / "a.wav").read_bytes() == b"audio"
    assert not (disk.root / "b.wav").exists()
    assert os.path.samefile(original, disk.root / "archive" / "a.wav")


def test_a_folder_not_made_durable_vanishes_with_what_it_holds(disk: PowerFS) -> None:
    (disk.root / "team").mkdir()
    durable_file(disk, "team/a.wav", b"audio")  # team's own entries are durable
    disk.cut()
    assert not (disk.root / "team").exists()


def test_rmdir_truncate_and_chmod_not_fsynced_are_undone(disk: PowerFS) -> None:
    (disk.root / "folder").mkdir()
    path = durable_file(disk, "a.wav", b"0123456789")
    os.chmod(path, 0o600)
    os.truncate(path, 3)
    (disk.root / "folder").rmdir()
    disk.cut()
    assert (disk.root / "folder").is_dir()
    assert path.read_bytes() == b"0123456789"
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_chmod_and_truncate_are_kept_by_fsync(disk: PowerFS) -> None:
    path = durable_file(disk, "a.wav", b"0123456789")
    fd = os.open(path, os.O_RDWR)
    os.fchmod(fd, 0o600)
    os.ftruncate(fd, 3)
    os.fsync(fd)
    os.close(fd)
    disk.cut()
    assert path.read_bytes() == b"012" and os.stat(path).st_mode & 0o777 == 0o600


def test_o_excl_statfs_and_large_files(disk: PowerFS) -> None:
    path = disk.root / "x.wav"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    with pytest.raises(FileExistsError):
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    data = os.urandom(3 << 20)
    write(path, data)
    assert path.read_bytes() == data
    assert os.statvfs(disk.root).f_bavail > 0


def test_locks_hold_across_processes(disk: PowerFS) -> None:
    """flock (the daemon's folder and lock file) and POSIX locks (SQLite) exclude another
    process."""
    path = durable_file(disk, "daemon.lock", b"")
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
        "for lock in (lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB),\n"
        "             lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 100)):\n"
        "    try:\n        lock(); print('taken')\n"
        "    except OSError: print('refused')\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert done.stdout.split() == ["refused", "refused"], done.stderr
    finally:
        os.close(fd)


def _sqlite_writes(disk: PowerFS, synchronous: str, rows: int) -> None:
    """Commit `rows` rows in WAL mode from a child process, read them from another (the
    shared memory is mmapped by both), and leave the database open when the power goes."""
    writer = (
        "import sqlite3, sys, time\n"
        "path, synchronous, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "db = sqlite3.connect(path, isolation_level=None)\n"
        "db.execute('PRAGMA journal_mode=WAL')\n"
        "db.execute('PRAGMA synchronous=' + synchronous)\n"
        "db.execute('CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, name TEXT)')\n"
        "for n in range(rows):\n"
        "    db.execute('INSERT INTO jobs (name) VALUES (?)', (f'rec {n}',))\n"
        "print('committed', flush=True)\n"
        "time.sleep(600)\n"
    )
    arguments = [str(disk.root / "jobs.sqlite3"), synchronous, str(rows)]
    process = subprocess.Popen(
        [sys.executable, "-c", writer, *arguments], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "committed\n"
    reader = f"import sqlite3; print(sqlite3.connect({str(disk.root / 'jobs.sqlite3')!r})"
    reader += ".execute('SELECT COUNT(*) FROM jobs').fetchone()[0])"
    seen = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True)
    assert seen.stdout.strip() == str(rows), seen.stderr
    assert disk.cut() >= 1  # the writer was killed by the cut
    process.wait(10)
    process.stdout.close()


def _count_rows(disk: PowerFS) -> int:
    with sqlite3.connect(disk.root / "jobs.sqlite3") as db:
        count = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    db.close()
    return int(count)


def test_sqlite_wal_with_synchronous_full_keeps_every_commit(disk: PowerFS) -> None:
    """The daemon's settings (WAL, synchronous=FULL): a commit that returned survives."""
    _sqlite_writes(disk, "FULL", 200)
    assert _count_rows(disk) == 200


def test_sqlite_wal_with_synchronous_normal_loses_the_last_commits(disk: PowerFS) -> None:
    """What the disk checks is real: WAL's default (NORMAL) does not fsync at commit, and a
    cut loses those commits (all of them: the database file itself was never synced)."""
    _sqlite_writes(disk, "NORMAL", 200)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _count_rows(disk)


def test_a_cut_kills_every_process_using_the_disk_and_spares_the_others(disk: PowerFS) -> None:
    folder = disk.root / "folder"
    folder.mkdir()
    holder = f"f = open({str(folder / 'x')!r}, 'w'); import time; time.sleep(600)"
    holding = subprocess.Popen([sys.executable, "-c", holder])
    inside = subprocess.Popen(["sleep", "600"], cwd=folder)
    outside = subprocess.Popen(["sleep", "600"])
    time.sleep(0.5)  # the first has opened its file
    try:
        assert disk.cut() == 2
        assert holding.wait(10) == -9 and inside.wait(10) == -9
        assert outside.poll() is None
        assert not folder.exists()  # never made durable
    finally:
        for process in (holding, inside, outside):
            process.kill()
            process.wait()


def test_after_the_cut_the_dead_disk_answers_eio_until_it_is_mounted_again(
    disk: PowerFS,
) -> None:
    path = durable_file(disk, "a.wav", b"audio")
    disk.ask("cut")
    with pytest.raises(OSError) as failed:
        path.write_bytes(b"too late")
    assert failed.value.errno in (errno.EIO, errno.ENOTCONN)
    disk.reboot()
    assert path.read_bytes() == b"audio"


def test_an_armed_cut_happens_right_after_the_named_operation(disk: PowerFS) -> None:
    """The campaign aims its cuts this way: here, right after the second rename into work/,
    before any folder is fsynced: both renames are undone, the first file's fsync kept."""
    for name in ("inbox", "work"):
        (disk.root / name).mkdir()
    disk.sync()
    for name in ("a.wav", "b.wav"):
        durable_file(disk, f"inbox/{name}", name.encode())
    disk.arm("rename", r"^inbox/.*->work/", 2)
    os.rename(disk.root / "inbox" / "a.wav", disk.root / "work" / "a.wav")
    assert not disk.fired()
    os.rename(disk.root / "inbox" / "b.wav", disk.root / "work" / "b.wav")
    assert disk.wait_fired(5)
    with pytest.raises(OSError):
        fsync_dir(disk.root / "work")  # too late: the power is already off
    disk.reboot()
    assert sorted(os.listdir(disk.root / "inbox")) == ["a.wav", "b.wav"]
    assert os.listdir(disk.root / "work") == []


def test_a_disk_mounts_where_the_path_has_a_space(tmp_path: Path) -> None:
    require_powerfs()
    with PowerFS(tmp_path / "archive disk") as spaced:
        durable_file(spaced, "a.wav", b"audio")
        spaced.cut()
        assert (spaced.root / "a.wav").read_bytes() == b"audio"
