"""What kind of filesystem a file is on, and which folders below a root are mounts of their own.

Read from the kernel's table (/proc/self/mountinfo). A network or FUSE filesystem is written
by processes this machine cannot see (another host, the far side of sshfs or rclone): there,
a read lease that succeeds says nothing about writers, and a stat of a hung mount blocks.
"""

import functools
import os
from pathlib import Path

NETWORK = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "virtiofs"}
)
_MOUNTINFO = Path("/proc/self/mountinfo")


def filesystem_type(device: int, mountinfo: Path = _MOUNTINFO) -> str | None:
    """The type of the filesystem mounted from `device` (st_dev), from the kernel's table."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    for fields, kind in _mounts(mountinfo):
        if fields[2] == wanted:
            return kind
    return None


@functools.lru_cache(maxsize=64)
def sees_every_writer(device: int) -> bool:
    """True when every process that can write to files on `device` runs on this machine (a
    local filesystem); False for network and FUSE filesystems (FUSE's far side may be another
    host: sshfs, rclone, a share mounted through gvfs)."""
    kind = filesystem_type(device) or ""
    return kind not in NETWORK and not kind.startswith("fuse")


def mounts_below(root: Path, mountinfo: Path = _MOUNTINFO) -> set[str]:
    """Folders strictly below `root` (relative paths) where another filesystem is mounted."""
    top = os.path.realpath(root)
    found = set()
    for fields, _kind in _mounts(mountinfo):
        point = _unescape(fields[4])
        if point != top and point.startswith(top.rstrip("/") + "/"):
            found.add(os.path.relpath(point, top))
    return found


def _mounts(mountinfo: Path) -> list[tuple[list[str], str]]:
    """(the fields before " - ", the filesystem type) for each mount."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        head, dash, tail = line.partition(" - ")
        fields = head.split()
        if dash and len(fields) > 4 and tail:
            table.append((fields, tail.split()[0]))
    return table


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace(f"\\{code}", chr(int(code, 8)))
    return field
