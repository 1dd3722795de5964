"""The systemd units and systemd's own tools to check them: shared by the tests of the
daemon's units (host/) and of the page's (web/)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[1] / "systemd"
SYSTEM_UNIT = UNITS / "transcribed.service"
USER_UNIT = UNITS / "transcribed-user.service"
VLLM_DROP_IN = UNITS / "transcribed.service.d" / "vllm.conf"
LOCAL_VLLM_DROP_IN = UNITS / "transcribed.service.d" / "vllm-local.conf"
ANALYZE = shutil.which("systemd-analyze")
# systemd-analyze's exposure score for our units: 1.5 before CAP_LEASE, which adds 0.1 (the
# daemon asks the kernel whether a writer still holds another user's recording open).
EXPOSURE_LIMIT = 1.6

needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def installed_copy(unit: Path, folder: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this environment's real `transcribed`
    (verify checks that the program exists)."""
    program = Path(sys.executable).parent / "transcribed"
    assert program.is_file(), "pip install -e . puts the transcribed script beside python"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={program}", unit.read_text(), flags=re.M)
    copy = folder / unit.name
    copy.write_text(text)
    return copy


def analyze(*args: str, user: bool = False, folder: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = dict(os.environ)
    if user:  # the user manager wants a runtime folder, which a CI shell may lack
        runtime = folder / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    command = [ANALYZE, *(["--user"] if user else []), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def unexplained_settings(unit: Path) -> list[list[str]]:
    """The blocks of [Service] lines that have a directive and no comment."""
    service = unit.read_text().split("[Service]")[1].split("[Install]")[0]
    unexplained = []
    for block in service.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        settings = [line for line in lines if not line.startswith("#")]
        if settings and not any(line.startswith("#") for line in lines):
            unexplained.append(settings)
    return unexplained
