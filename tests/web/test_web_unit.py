"""The page's unit: `systemd-analyze verify` is clean, its exposure is at most 1.5 (the network
it needs costs ~0.9 of that), and it may listen only on its port, reach only this machine,
and write only the inbox, the failed folder and its state directory."""

import re

import pytest

from support.systemd_units import (
    ANALYZE,
    UNITS,
    analyze,
    directives,
    installed_copy,
    needs_systemd,
    unexplained_settings,
)
from transcribed.settings.web import WebSettings

WEB_UNIT = UNITS / "transcribed-web.service"
EXPOSURE_LIMIT = 1.5


@needs_systemd
def test_web_unit_verifies_clean(tmp_path):
    done = analyze("verify", str(installed_copy(WEB_UNIT, tmp_path)), folder=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_systemd
def test_web_unit_exposure_is_at_most_1_5(tmp_path):
    assert ANALYZE is not None
    copy = installed_copy(WEB_UNIT, tmp_path)
    done = analyze("security", "--offline=yes", "--no-pager", str(copy), folder=tmp_path)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= EXPOSURE_LIMIT, done.stdout
    strict = analyze("security", "--offline=yes", "--threshold=15", str(copy), folder=tmp_path)
    assert strict.returncode == 0, strict.stdout


def test_web_unit_listens_only_on_its_port_and_writes_only_inbox_and_failed():
    unit = directives(WEB_UNIT)
    assert unit["ExecStart"][0].split()[1:3] == ["web", "--config"]
    assert unit["User"] == ["transcribed"] and unit["StateDirectory"] == ["transcribed"]
    assert "PrivateNetwork" not in unit, "the page must accept connections"
    assert unit["IPAddressDeny"] == ["any"] and unit["IPAddressAllow"] == ["localhost"]
    assert unit["SocketBindDeny"] == ["any"]
    assert unit["SocketBindAllow"] == [f"tcp:{WebSettings().port}"], "the default [web] port"
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert unit["ProtectSystem"] == ["strict"]
    writable = unit["ReadWritePaths"][0].split()
    assert writable == ["/srv/recordings/inbox", "/srv/recordings/failed"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["CapabilityBoundingSet"] == [""]


@pytest.mark.parametrize("unit", [WEB_UNIT])
def test_every_line_of_the_web_unit_is_explained(unit):
    assert unexplained_settings(unit) == []
