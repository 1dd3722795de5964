"""When is a file finished? An arrival signal plus an identity unchanged for a settle window.

Pure logic with an injected clock and stat function, so tests drive it without sleeping.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Identity:
    """What changes when anyone writes, truncates, replaces or touches a file."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> "Identity":
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass
class _Watch:
    identity: Identity | None
    since: float


class SettleTracker:
    """Collects arrived paths and releases each once it stopped changing for `settle_seconds`."""

    def __init__(
        self,
        settle_seconds: float,
        look: Callable[[str], Identity | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settle = settle_seconds
        self._look = look
        self._clock = clock
        self._pending: dict[str, _Watch] = {}

    def arrived(self, relpath: str) -> None:
        """An arrival signal (close, rename-in, rescan): start or keep watching the path."""
        self._pending.setdefault(relpath, _Watch(identity=None, since=self._clock()))

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, relpath: object) -> bool:
        return relpath in self._pending

    def ready(self) -> list[tuple[str, Identity]]:
        """Paths unchanged across a whole settle window, in arrival order; they stop being
        watched. Vanished paths are dropped."""
        now = self._clock()
        settled: list[tuple[str, Identity]] = []
        for relpath, watch in list(self._pending.items()):
            identity = self._look(relpath)
            if identity is None:
                del self._pending[relpath]
            elif identity != watch.identity:
                watch.identity, watch.since = identity, now
            elif now - watch.since >= self._settle:
                del self._pending[relpath]
                settled.append((relpath, identity))
        return settled
