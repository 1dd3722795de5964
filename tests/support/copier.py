"""A careful copier, as a user's sync tool would be: each file is written under a hidden temp
name, fsynced, renamed to its name and its folder fsynced; only then does it say `durable`.

    python copier.py INBOX     (then lines "SOURCE<TAB>RELPATH" on stdin)

Answers each line with "start RELPATH" before it writes anything, and "durable RELPATH"
once the copy can no longer be lost. Folders it creates are made durable first (each mkdir,
then its parent fsynced). A power cut kills it mid-copy (its working folder is the inbox);
what it had not reported may or may not be there afterwards, never in part under its final
name.
"""

import os
import sys
from pathlib import Path

TEMP_SUFFIX = ".copying"  # hidden and not audio: the daemon leaves it alone


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_folders(inbox: Path, relative: Path) -> Path:
    folder = inbox
    for part in relative.parts:
        child = folder / part
        if not child.exists():
            child.mkdir()
            fsync_dir(folder)
        folder = child
    return folder


def copy(source: Path, inbox: Path, relpath: str) -> None:
    target = inbox / relpath
    folder = make_folders(inbox, Path(relpath).parent)
    temp = folder / f".{target.name}{TEMP_SUFFIX}"
    data = source.read_bytes()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 64 << 10]) :]  # in pieces, as a copy over a share
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, target)
    fsync_dir(folder)


def main() -> None:
    inbox = Path(sys.argv[1])
    os.chdir(inbox)  # a power cut kills whoever uses the disk: this copier too
    for line in sys.stdin:
        source, relpath = line.rstrip("\n").split("\t")
        print(f"start {relpath}", flush=True)
        try:
            copy(Path(source), inbox, relpath)
        except OSError as error:  # the power went (EIO) while it copied
            sys.exit(f"copier: {relpath} not copied: {error}")
        print(f"durable {relpath}", flush=True)


if __name__ == "__main__":
    main()
