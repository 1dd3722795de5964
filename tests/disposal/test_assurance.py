"""What a disposal can promise is looked up, not assumed, and said plainly."""

import os
from pathlib import Path

import pytest

from transcribed.disposal.assurance import assess, classify, filesystem_type, is_rotational


@pytest.mark.parametrize(
    ("method", "filesystem", "rotational", "expected"),
    [
        ("move", "ext4", False, "kept"),
        ("delete", "ext4", True, "not-erased"),
        ("shred", "ext4", True, "overwritten"),
        ("shred", "xfs", False, "not-guaranteed-ssd"),
        ("shred", "btrfs", True, "not-guaranteed-cow"),
        ("shred", "zfs", None, "not-guaranteed-cow"),
        ("shred", "nfs4", None, "not-guaranteed-network"),
        ("shred", "cifs", None, "not-guaranteed-network"),
        ("shred", "fuse.sshfs", None, "not-guaranteed-network"),
        ("shred", "tmpfs", None, "overwritten"),
        ("shred", "ext4", None, "not-guaranteed-unknown"),
        ("shred", None, None, "not-guaranteed-unknown"),
    ],
)
def test_classification(method, filesystem, rotational, expected) -> None:
    assert classify(method, filesystem, rotational) == expected


def test_the_filesystem_and_rotational_flag_come_from_the_kernel_tables(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:45 / /srv/share rw shared:9 - nfs4 server:/export rw,vers=4.2\n"
    )
    assert filesystem_type(os.makedev(8, 1), mountinfo) == "ext4"
    assert filesystem_type(os.makedev(0, 45), mountinfo) == "nfs4"
    assert filesystem_type(os.makedev(9, 9), mountinfo) is None
    disk = tmp_path / "block" / "devices" / "sda"
    (disk / "queue").mkdir(parents=True)
    (disk / "queue" / "rotational").write_text("0\n")
    (disk / "sda1").mkdir()
    (tmp_path / "block" / "8:1").symlink_to(disk / "sda1")  # a partition asks its disk
    (tmp_path / "block" / "8:0").symlink_to(disk)
    assert is_rotational(os.makedev(8, 1), tmp_path / "block") is False
    assert is_rotational(os.makedev(8, 0), tmp_path / "block") is False
    assert is_rotational(os.makedev(7, 7), tmp_path / "block") is None


def test_this_machines_storage_is_assessed_without_error(tmp_path: Path) -> None:
    found = assess("shred", tmp_path)
    assert found.filesystem  # every Linux mount is in /proc/self/mountinfo
    assert found.assurance == classify("shred", found.filesystem, found.rotational)
