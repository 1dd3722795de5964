"""How the daemon's engine servers stand, for `transcribed status` in another process.

The running daemon rewrites a small JSON file in its state folder whenever a server goes
down or comes back (atomically: a reader never sees half of it); `status` reads it and
shows the summary line, "1 of 2 engine servers up", with the reason each server that is
down is down (the page shows the same line). The file names the daemon's process, so one left
behind by a daemon that is no longer running is not shown.
"""

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

FILE_NAME = "engine-servers.json"
_REASON_CHARS = 200


def summary(servers: list[dict[str, Any]]) -> str:
    """`1 of 2 engine servers up (https://b:8000: HTTP 503: …)`: why each down one is."""
    line = f"{sum(bool(s['up']) for s in servers)} of {len(servers)} engine servers up"
    reasons = [
        f"{server['url']}: {str(server.get('problem') or 'down')[:_REASON_CHARS]}"
        for server in servers
        if not server["up"]
    ]
    return f"{line} ({'; '.join(reasons)})" if reasons else line


def write(state_dir: Path, servers: list[dict[str, Any]]) -> None:
    record = {"pid": os.getpid(), "written": time.time(), "servers": servers}
    temp = state_dir / f".{FILE_NAME}.{os.getpid()}.tmp"
    temp.write_text(json.dumps(record))
    os.replace(temp, state_dir / FILE_NAME)


def clear(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / FILE_NAME).unlink()


def read(state_dir: Path) -> list[dict[str, Any]] | None:
    """The servers as the running daemon last saw them; None when no daemon with the vLLM
    engine is running (or it wrote nothing yet)."""
    try:
        record = json.loads((state_dir / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(record.get("pid", 0))):
        return None
    servers: list[dict[str, Any]] = record.get("servers", [])
    return servers


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, under another user
    return True
