"""The systemd units: `systemd-analyze verify` is clean and the system unit's exposure score is
at most 1.5, checked with systemd's own tools (installed by .ci/run)."""

import re
from pathlib import Path

import pytest

from systemd_units import (
    EXPOSURE_LIMIT,
    LOCAL_VLLM_DROP_IN,
    SYSTEM_UNIT,
    USER_UNIT,
    VLLM_DROP_IN,
    analyze,
    directives,
    installed_copy,
    needs_systemd,
    unexplained_settings,
)


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


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT, VLLM_DROP_IN, LOCAL_VLLM_DROP_IN])
def test_every_service_line_is_explained_by_a_comment(unit: Path) -> None:
    """Each directive in [Service] has a comment in the block of lines it belongs to."""
    assert unexplained_settings(unit) == []


def installed_with_drop_in(folder: Path, drop_in: Path = VLLM_DROP_IN) -> Path:
    """The system unit installed as systemd finds it, with a vLLM drop-in beside it."""
    unit = installed_copy(SYSTEM_UNIT, folder)
    (folder / "transcribed.service.d").mkdir()
    (folder / "transcribed.service.d" / drop_in.name).write_text(drop_in.read_text())
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


@needs_systemd
def test_the_local_vllm_drop_in_opens_loopback_only(tmp_path: Path) -> None:
    """vLLM on the same GPU, at 127.0.0.1: the daemon reaches loopback and nothing else."""
    unit = installed_with_drop_in(tmp_path, LOCAL_VLLM_DROP_IN)
    done = analyze("verify", str(unit), folder=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    report = analyze("security", "--offline=yes", "--no-pager", str(unit), folder=tmp_path)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
    assert found and float(found.group(1)) <= EXPOSURE_LIMIT, report.stdout
    drop_in = directives(LOCAL_VLLM_DROP_IN)
    assert drop_in["IPAddressAllow"] == ["localhost"] and drop_in["IPAddressDeny"] == ["any"]
    assert drop_in["PrivateNetwork"] == ["no"]
