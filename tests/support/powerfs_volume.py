"""The power-cut disk's contents and their two states (see powerfs_server.py): what each
inode and folder holds now, what survives a cut, and every change between them, without
FUSE (the server maps FUSE's requests onto `Volume`'s methods).

Durability rules, as on a strict real disk (LazyFS's):
- a file's data, size and attributes become durable when it is fsynced (fdatasync: data and
  size); never by close;
- a folder's entries (names -> inodes) become durable when it is fsynced; a rename becomes
  durable, on both sides, when either of its folders is fsynced (one journalled operation);
- an inode is created durable but empty: a file whose name never became durable vanishes at
  a cut, however often its data was fsynced;
- a cut makes every inode its durable self and drops what no durable name reaches.
"""

import errno
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass, field

import pyfuse3

BLOCK = 32 * 1024


class Content:
    """File bytes in immutable blocks: a durable snapshot shares them (copy on write)."""

    def __init__(self, blocks: list[bytes] | None = None, size: int = 0) -> None:
        self.blocks = blocks if blocks is not None else []
        self.size = size

    def snapshot(self) -> "Content":
        return Content(list(self.blocks), self.size)

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        parts = []
        while offset < end:
            index, within = divmod(offset, BLOCK)
            take = min(BLOCK - within, end - offset)
            parts.append(self.blocks[index][within : within + take])
            offset += take
        return b"".join(parts)

    def write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            self.truncate(offset + len(data))
        done = 0
        while done < len(data):
            index, within = divmod(offset + done, BLOCK)
            take = min(BLOCK - within, len(data) - done)
            old = self.blocks[index]
            self.blocks[index] = old[:within] + data[done : done + take] + old[within + take :]
            done += take

    def truncate(self, size: int) -> None:
        if size < self.size:
            count = -(-size // BLOCK)
            del self.blocks[count:]
            if self.blocks:
                self.blocks[-1] = self.blocks[-1][: size - (count - 1) * BLOCK]
        elif size > self.size:
            if self.blocks and len(self.blocks[-1]) < BLOCK:  # fill the last block with zeros
                room = min(BLOCK, size - (len(self.blocks) - 1) * BLOCK)
                self.blocks[-1] += bytes(room - len(self.blocks[-1]))
            while len(self.blocks) * BLOCK < size:
                self.blocks.append(bytes(min(BLOCK, size - len(self.blocks) * BLOCK)))
        self.size = size


@dataclass
class Attributes:
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0


@dataclass
class Durable:
    """What survives a cut of one inode."""

    attributes: Attributes
    content: Content = field(default_factory=Content)
    entries: dict[bytes, int] = field(default_factory=dict)
    target: bytes = b""


@dataclass
class Node:
    ino: int
    attributes: Attributes
    content: Content = field(default_factory=Content)  # regular files
    entries: dict[bytes, int] = field(default_factory=dict)  # folders
    target: bytes = b""  # symbolic links
    parent: int = 0  # folders: the folder holding it now (for "..")
    nlink: int = 0
    lookups: int = 0  # the kernel's references (forget returns them)
    opens: int = 0
    durable_refs: int = 0  # durable entries naming it
    durable: Durable | None = None
    seen_as: tuple[int, bytes] | None = None  # (folder, name) it was last reached by

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attributes.mode)


@dataclass
class Rename:
    """A rename not yet durable on either side: the first folder fsynced makes it durable."""

    source: int
    old: bytes
    target: int
    new: bytes
    ino: int


@dataclass
class Trigger:
    operation: str
    pattern: re.Pattern[str]
    nth: int
    seen: int = 0
    fired: bool = False


def now_ns() -> int:
    return time.time_ns()


def fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class Volume:
    """The filesystem's two states and every operation on them, without FUSE."""

    def __init__(self) -> None:
        now = now_ns()
        root = Attributes(stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), now, now, now)
        self.nodes: dict[int, Node] = {
            pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, root, parent=pyfuse3.ROOT_INODE, nlink=2)
        }
        self.nodes[pyfuse3.ROOT_INODE].durable = Durable(_copy(root))
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.renames: list[Rename] = []
        self.dead = False
        self.trigger: Trigger | None = None
        self.counts: Counter[str] = Counter()

    # --- names and paths -------------------------------------------------------------

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise fail(errno.ESTALE) from None

    def folder(self, ino: int) -> Node:
        found = self.node(ino)
        if not found.is_dir:
            raise fail(errno.ENOTDIR)
        return found

    def path(self, folder: int, name: bytes = b"") -> str:
        parts = [name] if name else []
        while folder != pyfuse3.ROOT_INODE and folder in self.nodes:
            parent = self.nodes[self.nodes[folder].parent]
            parts.append(next((n for n, i in parent.entries.items() if i == folder), b"?"))
            folder = parent.ino
        return os.fsdecode(b"/".join(reversed(parts)))

    def child(self, folder: int, name: bytes) -> Node:
        parent = self.folder(folder)
        if name == b".":
            return parent
        if name == b"..":
            return self.node(parent.parent)
        ino = parent.entries.get(name)
        if ino is None:
            raise fail(errno.ENOENT)
        self.nodes[ino].seen_as = (folder, name)
        return self.nodes[ino]

    # --- the cut and the triggers -------------------------------------------------------

    def alive(self) -> None:
        if self.dead:
            raise fail(errno.EIO)

    def happened(self, operation: str, subject: str) -> None:
        """An operation completed: count it, and cut the power if it is the armed one."""
        self.counts[operation] += 1
        trigger = self.trigger
        if trigger is None or trigger.fired or trigger.operation != operation:
            return
        if trigger.pattern.search(subject):
            trigger.seen += 1
            if trigger.seen >= trigger.nth:
                trigger.fired = True
                self.cut()

    def cut(self) -> None:
        """Power off: every inode becomes what was durable; what no durable name reaches goes."""
        self.dead = True
        self.counts["cuts"] += 1
        for found in self.nodes.values():
            assert found.durable is not None
            found.attributes = _copy(found.durable.attributes)
            found.content = found.durable.content.snapshot()
            found.entries = dict(found.durable.entries)
            found.target = found.durable.target
        self.renames.clear()
        self._collect()

    def _collect(self) -> None:
        """Keep what the root reaches; recount names and parents; the kernel forgot all."""
        reached: dict[int, Node] = {}
        pending = [(pyfuse3.ROOT_INODE, pyfuse3.ROOT_INODE)]
        while pending:
            ino, parent = pending.pop()
            found = self.nodes[ino]
            if ino in reached:
                found.nlink += 1
                continue
            reached[ino] = found
            found.parent, found.lookups, found.opens = parent, 0, 0
            found.nlink = 2 if found.is_dir else 1
            found.durable_refs = 0
            pending.extend((child, ino) for child in found.entries.values())
        for found in reached.values():
            for child in found.entries.values():
                reached[child].durable_refs += 1
                if reached[child].is_dir:
                    found.nlink += 1
        self.nodes = reached

    def sync(self) -> None:
        """Everything durable, as after a clean shutdown."""
        for found in list(self.nodes.values()):
            self._keep_file(found, data_only=False)
            if found.is_dir:
                self._set_durable_entries(found, dict(found.entries))
        self.renames.clear()

    # --- durability ---------------------------------------------------------------------

    def _keep_file(self, found: Node, data_only: bool) -> None:
        assert found.durable is not None
        found.durable.content = found.content.snapshot()
        found.durable.target = found.target
        if not data_only:
            found.durable.attributes = _copy(found.attributes)

    def fsync(self, ino: int, data_only: bool, subject: str) -> None:
        self._keep_file(self.node(ino), data_only)
        self.happened("fsync", subject)

    def fsyncdir(self, ino: int, subject: str) -> None:
        folder = self.folder(ino)
        self._set_durable_entries(folder, dict(folder.entries))
        assert folder.durable is not None
        folder.durable.attributes = _copy(folder.attributes)
        for rename in [r for r in self.renames if ino in (r.source, r.target)]:
            self.renames.remove(rename)
            self._other_side(rename, ino)
        self.happened("fsyncdir", subject)

    def _other_side(self, rename: Rename, fsynced: int) -> None:
        """A rename made durable by fsyncing one of its folders is durable in the other."""
        if rename.source == rename.target:
            return
        other = self.nodes.get(rename.source if rename.target == fsynced else rename.target)
        if other is None or other.durable is None:
            return
        entries = dict(other.durable.entries)
        if rename.target == fsynced and entries.get(rename.old) == rename.ino:
            del entries[rename.old]
        elif rename.source == fsynced:
            entries[rename.new] = rename.ino
        self._set_durable_entries(other, entries)

    def _set_durable_entries(self, folder: Node, entries: dict[bytes, int]) -> None:
        assert folder.durable is not None
        dropped = list(folder.durable.entries.values())
        for ino in dropped:
            if ino in self.nodes:
                self.nodes[ino].durable_refs -= 1
        folder.durable.entries = entries
        for ino in entries.values():
            self.nodes[ino].durable_refs += 1
        for ino in dropped:
            self.maybe_free(ino)

    def maybe_free(self, ino: int) -> None:
        """Forget an inode nothing can reach any more: no name now, none durable, no user."""
        found = self.nodes.get(ino)
        if found is None or ino == pyfuse3.ROOT_INODE:
            return
        unused = found.lookups <= 0 and found.opens <= 0 and found.durable_refs <= 0
        if unused and found.nlink == 0 and all(r.ino != ino for r in self.renames):
            del self.nodes[ino]

    # --- changes ------------------------------------------------------------------------

    def make(self, folder: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Node:
        parent = self.folder(folder)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        if len(name) > 255:
            raise fail(errno.ENAMETOOLONG)
        now = now_ns()
        attributes = Attributes(mode, uid, gid, now, now, now, rdev)
        made = Node(self.next_ino, attributes, durable=Durable(_copy(attributes)))
        self.next_ino += 1
        self.nodes[made.ino] = made
        self._add(parent, name, made)
        return made

    def _add(self, parent: Node, name: bytes, child: Node) -> None:
        parent.entries[name] = child.ino
        child.seen_as = (parent.ino, name)
        child.nlink += 2 if child.is_dir else 1
        if child.is_dir:
            child.parent = parent.ino
            parent.nlink += 1
        self._touch(parent)
        child.attributes.ctime_ns = now_ns()

    def _remove(self, parent: Node, name: bytes) -> Node:
        child = self.nodes[parent.entries.pop(name)]
        child.nlink -= 2 if child.is_dir else 1
        if child.is_dir:
            parent.nlink -= 1
        self._touch(parent)
        child.attributes.ctime_ns = now_ns()
        return child

    def _touch(self, found: Node) -> None:
        found.attributes.mtime_ns = found.attributes.ctime_ns = now_ns()

    def unlink(self, folder: int, name: bytes) -> None:
        child = self.child(folder, name)
        if child.is_dir:
            raise fail(errno.EISDIR)
        self._remove(self.folder(folder), name)
        self.maybe_free(child.ino)
        self.happened("unlink", self.path(folder, name))

    def rmdir(self, folder: int, name: bytes) -> None:
        child = self.child(folder, name)
        if not child.is_dir:
            raise fail(errno.ENOTDIR)
        if child.entries:
            raise fail(errno.ENOTEMPTY)
        self._remove(self.folder(folder), name)
        self.maybe_free(child.ino)
        self.happened("rmdir", self.path(folder, name))

    def link(self, ino: int, folder: int, name: bytes) -> Node:
        found = self.node(ino)
        parent = self.folder(folder)
        if found.is_dir:
            raise fail(errno.EPERM)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        self._add(parent, name, found)
        self.happened("link", f"{self.path(folder, name)}")
        return found

    def rename(self, old_folder: int, old: bytes, new_folder: int, new: bytes, flags: int) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise fail(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT: not needed here
        source, target = self.folder(old_folder), self.folder(new_folder)
        moving = self.child(old_folder, old)
        subject = f"{self.path(old_folder, old)}->{self.path(new_folder, new)}"
        replaced_ino = target.entries.get(new)
        if replaced_ino == moving.ino:
            return  # two names of one inode: rename does nothing
        if replaced_ino is not None:
            replaced = self.nodes[replaced_ino]
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise fail(errno.EEXIST)
            if replaced.is_dir and not moving.is_dir:
                raise fail(errno.EISDIR)
            if moving.is_dir and not replaced.is_dir:
                raise fail(errno.ENOTDIR)
            if replaced.is_dir and replaced.entries:
                raise fail(errno.ENOTEMPTY)
        if moving.is_dir and self._inside(new_folder, moving.ino):
            raise fail(errno.EINVAL)
        if replaced_ino is not None:
            self._remove(target, new)
        self._remove(source, old)
        self._add(target, new, moving)
        self.renames.append(Rename(old_folder, old, new_folder, new, moving.ino))
        if replaced_ino is not None:
            self.maybe_free(replaced_ino)
        self.happened("rename", subject)

    def _inside(self, folder: int, ancestor: int) -> bool:
        while True:
            if folder == ancestor:
                return True
            if folder == pyfuse3.ROOT_INODE:
                return False
            folder = self.nodes[folder].parent


def _copy(attributes: Attributes) -> Attributes:
    return Attributes(**vars(attributes))
