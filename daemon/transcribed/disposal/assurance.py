"""How sure can we be that a disposal really removed the recording? Said plainly, per file.

Overwriting a file in place only reaches the old bytes on a plain filesystem over a spinning
disk. SSDs remap writes (the old blocks linger until garbage collection), copy-on-write
filesystems write the new bytes elsewhere, network shares do whatever the server does, and
snapshots or backups keep their own copies. We look up the filesystem type (mountinfo) and
the block device's rotational flag (sysfs) and record the honest answer.
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transcribed.files.filesystems import NETWORK, filesystem_type

COPY_ON_WRITE = frozenset({"btrfs", "zfs", "bcachefs", "nilfs2", "f2fs"})
MEMORY = frozenset({"tmpfs", "ramfs"})


@dataclass(frozen=True)
class Assurance:
    method: str  # move | delete | shred
    assurance: str  # what the method achieves on this storage (see `assess`)
    filesystem: str | None
    rotational: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def assess(method: str, folder: Path) -> Assurance:
    """What disposing of files in `folder` with `method` achieves."""
    device = os.stat(folder).st_dev
    filesystem = filesystem_type(device)
    rotational = is_rotational(device)
    return Assurance(method, classify(method, filesystem, rotational), filesystem, rotational)


def classify(method: str, filesystem: str | None, rotational: bool | None) -> str:
    """`kept` (moved to the archive), `not-erased` (deleted: the blocks stay until reused),
    `overwritten` (shredded where that reaches the old bytes), or `not-guaranteed-<why>`."""
    if method == "move":
        return "kept"
    if method == "delete":
        return "not-erased"
    if filesystem in COPY_ON_WRITE:
        return "not-guaranteed-cow"
    if filesystem in NETWORK or (filesystem or "").startswith("fuse"):
        return "not-guaranteed-network"
    if filesystem in MEMORY:
        return "overwritten"
    if rotational is False:
        return "not-guaranteed-ssd"
    if rotational is True:
        return "overwritten"
    return "not-guaranteed-unknown"


def is_rotational(device: int, sysfs: Path = Path("/sys/dev/block")) -> bool | None:
    """The block device's rotational flag (a partition asks its disk); None when unknown."""
    node = sysfs / f"{os.major(device)}:{os.minor(device)}"
    for queue in (node / "queue" / "rotational", node / ".." / "queue" / "rotational"):
        try:
            return queue.read_text().strip() == "1"
        except OSError:
            continue
    return None
