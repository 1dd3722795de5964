"""Arrival signals from the inbox: watchdog events (or polling) and full rescans.

Handlers only hand a relative path on and never raise: an exception in a watchdog handler
kills its observer thread, and a full rescan covers whatever events are lost.
"""

import contextlib
import errno
import os
import queue
from collections.abc import Callable, Iterator
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from transcribed import faults
from transcribed.files.filesystems import mounts_below
from transcribed.files.folders import open_below
from transcribed.files.names import display_name, is_candidate, is_temporary_name
from transcribed.logs import get_logger

log = get_logger(__name__)


class ArrivalHandler(FileSystemEventHandler):
    """Turns watchdog events into relative paths on a thread-safe queue."""

    def __init__(self, inbox: Path, arrivals: "queue.SimpleQueue[str]") -> None:
        self._inbox = os.fsdecode(os.path.abspath(inbox))
        self._arrivals = arrivals

    def on_any_event(self, event: FileSystemEvent) -> None:
        faults.point("watch.event", os.fsdecode(event.src_path))  # tests: kill this thread
        try:
            self._handle(event)
        except Exception:  # a raising handler would silently kill the observer thread
            log.exception("watch.handler_error")

    def _handle(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            # A folder moved in brings files that produce no events of their own.
            if isinstance(event, FileMovedEvent | FileCreatedEvent):
                self._offer_tree(os.fsdecode(_target(event)))
            return
        if isinstance(event, FileClosedEvent | FileCreatedEvent | FileMovedEvent):
            self._offer(os.fsdecode(_target(event)))

    def _offer(self, path: str) -> None:
        relpath = os.path.relpath(path, self._inbox)
        if not relpath.startswith("..") and is_candidate(relpath):
            self._arrivals.put(relpath)

    def _offer_tree(self, folder: str) -> None:
        for relpath in walk_candidates(Path(folder)):
            self._offer(os.path.join(folder, relpath))


def _target(event: FileSystemEvent) -> str | bytes:
    return event.dest_path if isinstance(event, FileMovedEvent) else event.src_path


def walk_candidates(root: Path) -> Iterator[str]:
    """Relative paths of candidate files below `root`; never enters symlinked or hidden folders."""
    return (relpath for relpath in walk_files(root) if is_candidate(relpath))


def walk_files(root: Path, on_error: Callable[[str, OSError], None] | None = None) -> Iterator[str]:
    """Relative paths of every file below `root` without a temporary or hidden name (recordings
    or not); never enters symlinked or hidden folders. A folder that cannot be listed is
    handed to `on_error` (relative path, error) and skipped: the rest is still walked."""
    stack = [""]
    mounts = mounts_below(root)  # never entered: not ours to claim from, and may hang
    while stack:
        relfolder = stack.pop()
        if relfolder in mounts:
            (on_error or _log_unreadable)(relfolder, OSError(errno.EXDEV, MOUNT_INSIDE))
            continue
        try:
            entries = _list_folder(root, relfolder)
        except OSError as error:
            (on_error or _log_unreadable)(relfolder, error)
            continue
        for name, is_folder in entries:
            relpath = os.path.join(relfolder, name)
            if is_temporary_name(name):
                continue
            if is_folder:
                stack.append(relpath)
            else:
                yield relpath


MOUNT_INSIDE = (
    "another filesystem is mounted here, inside the inbox: not looked into (claims are "
    "renames within the inbox's own filesystem, and a hung mount would stop every claim)"
)


def _list_folder(root: Path, relfolder: str) -> list[tuple[str, bool]]:
    """(name, is a real folder) of each entry, by name; a folder deeper than PATH_MAX allows
    is listed through descriptors."""
    try:
        return _entries(root / relfolder)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
    fd = open_below(root, relfolder)
    try:
        return _entries(fd)
    finally:
        os.close(fd)


def _entries(folder: Path | int) -> list[tuple[str, bool]]:
    with os.scandir(folder) as entries:
        found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    return sorted(found)


def _log_unreadable(relfolder: str, error: OSError) -> None:
    log.warning("scan.unreadable_folder", folder=display_name(relfolder), error=str(error))


def start_observer(
    inbox: Path, arrivals: "queue.SimpleQueue[str]", mode: str, poll_seconds: float
) -> BaseObserver:
    """A started, recursive observer feeding `arrivals`."""
    observer: BaseObserver = PollingObserver(timeout=poll_seconds) if mode == "poll" else Observer()
    observer.schedule(ArrivalHandler(inbox, arrivals), str(inbox), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


class ObserverSupervisor:
    """Keeps one observer running: watchdog's thread can die (a raising handler, an inotify
    error) without telling anyone. `check` restarts a dead one and asks for a rescan, since
    events were lost while it was down.

    With `restart=False` (under systemd's watchdog) a dead observer stays dead: the health
    check then withholds the watchdog pings and systemd restarts the whole service, which
    recovers from a clean start and shows up in its restart counter and the journal.
    """

    def __init__(
        self,
        inbox: Path,
        arrivals: "queue.SimpleQueue[str]",
        mode: str,
        poll_seconds: float,
        request_rescan: Callable[[], None],
        restart: bool = True,
    ) -> None:
        self._args = (inbox, arrivals, mode, poll_seconds)
        self._request_rescan = request_rescan
        self._restart = restart
        self.observer = start_observer(*self._args)
        self.restarts = 0

    def check(self) -> bool:
        """Restart the observer if its thread died (and restarting is ours to do); True when
        it did."""
        if self.observer.is_alive() or not self._restart:
            return False
        log.warning("watch.observer_died_restarting", restarts=self.restarts + 1)
        return self.restart()

    def restart(self) -> bool:
        """A new observer (the inbox folder was replaced: the old one watches the old
        folder); False when the inbox cannot be watched now (tried again later)."""
        with contextlib.suppress(Exception):
            self.observer.stop()
        try:
            self.observer = start_observer(*self._args)
        except OSError as error:  # the inbox is gone right now
            log.warning("watch.cannot_start", error=str(error))
            return False
        self.restarts += 1
        self._request_rescan()
        return True

    def stop(self) -> None:
        self.observer.stop()
