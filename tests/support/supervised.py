"""Loops run in tests as the daemon runs them: by the one supervisor, on their own threads."""

import contextlib
import threading
from collections.abc import Iterator

from transcribed.loops.supervisor import Loop, Supervisor


@contextlib.contextmanager
def supervised(*loops: Loop, stop: threading.Event | None = None) -> Iterator[Supervisor]:
    """Run `loops` until the block ends; then stop them, and fail if one does not end."""
    supervisor = Supervisor(stop or threading.Event())
    for loop in loops:
        supervisor.add(loop)
    supervisor.start()
    try:
        yield supervisor
    finally:
        supervisor.stop.set()
        assert supervisor.join(30) == [], "a loop did not stop"
