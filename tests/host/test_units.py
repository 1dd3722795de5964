"""The systemd units: `systemd-analyze verify` is clean and the system unit's exposure score is
at most 1.5, checked with systemd's own tools (installed by .ci/run)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parent.parent / "systemd"
SYSTEM_UNIT = UNITS / "transcribed.service"
USER_UNIT = UNITS / "transcribed-user.service"
VLLM_DROP_IN = UNITS / "transcribed.service.d" / "vllm.conf"
ANALYZE = shutil.which("systemd-analyze")
EXPOSURE_LIMIT = 1.5

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


@needs_systemd
@pytest.mark.parametrize(("unit", "user"), [(SYSTEM_UNIT, False), (USER_UNIT, True)])
def test_units_verify_clean(unit: Path, user: bool, tmp_path: Path) -> None:
    done = analyze("verify", str(installed_copy(unit, tmp_path)), user=user, folder=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_systemd
def test_system_unit_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    copy = installed_copy(SYSTEM_UNIT, tmp_path)
    done = analyze("security", "--offline=yes", "--no-pager", str(copy), folder=tmp_path)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, done.stdout
    # systemd's own pass/fail on the same limit (the threshold is in tenths).
    strict = analyze("security", "--offline=yes", "--threshold=15", str(copy), folder=tmp_path)
    assert strict.returncode == 0, strict.stdout


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_system_unit_keeps_the_gpu_and_cuts_the_network() -> None:
    unit = directives(SYSTEM_UNIT)
    for key, value in {
        "Type": "notify",
        "PrivateNetwork": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "no",
        "LimitCORE": "0",
        "StateDirectory": "transcribed",
    }.items():
        assert unit.get(key) == [value], key
    assert "MemoryDenyWriteExecute" not in unit, "torch and the CUDA driver JIT-compile code"
    assert unit["ReadWritePaths"] and unit["UMask"] and unit["User"] == ["transcribed"]
    assert any("nvidia" in allowed for allowed in unit["DeviceAllow"])
    assert "/etc/transcribed/" in unit["ExecStart"][0]


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT, VLLM_DROP_IN])
def test_every_service_line_is_explained_by_a_comment(unit: Path) -> None:
    """Each directive in [Service] has a comment in the block of lines it belongs to."""
    service = unit.read_text().split("[Service]")[1].split("[Install]")[0]
    for block in service.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        settings = [line for line in lines if not line.startswith("#")]
        if settings:
            assert any(line.startswith("#") for line in lines), f"uncommented: {settings}"


def installed_with_drop_in(folder: Path) -> Path:
    """The system unit installed as systemd finds it, with the vLLM drop-in beside it."""
    unit = installed_copy(SYSTEM_UNIT, folder)
    (folder / "transcribed.service.d").mkdir()
    (folder / "transcribed.service.d" / VLLM_DROP_IN.name).write_text(VLLM_DROP_IN.read_text())
    return unit


@needs_systemd
def test_the_vllm_drop_in_opens_the_network_to_the_servers_only(tmp_path: Path) -> None:
    unit = installed_with_drop_in(tmp_path)
    done = analyze("verify", str(unit), folder=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    report = analyze("security", "--offline=yes", "--no-pager", str(unit), folder=tmp_path)
    lines = report.stdout.splitlines()
    # The drop-in is applied: the host's network, behind an allow list of servers...
    assert any("PrivateNetwork=" in line and "host's network" in line for line in lines)
    assert any("IPAddressDeny=" in line and "allow list" in line for line in lines)
    # ...and nothing else was loosened: the exposure stays within the unit's own limit.
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
    assert found and float(found.group(1)) <= EXPOSURE_LIMIT, report.stdout
    drop_in = directives(VLLM_DROP_IN)
    assert drop_in["PrivateNetwork"] == ["no"] and drop_in["IPAddressDeny"] == ["any"]
    assert drop_in["IPAddressAllow"] and drop_in["RestrictAddressFamilies"][0] == ""
