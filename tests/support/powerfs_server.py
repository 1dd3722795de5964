"""A FUSE filesystem whose power can be cut: what was not fsynced is lost, as on a real disk.

Run by `powerfs.PowerFS` as `python powerfs_server.py MOUNTPOINT CONTROL_SOCKET`; it serves
one mount from memory, in one thread (trio), so every operation is atomic with respect to a
cut. Like LazyFS (which Jepsen uses), it keeps two states of everything:

- a file's data, size and attributes become durable when the file is fsynced (fdatasync:
  data and size); never by close;
- a folder's entries (names -> inodes) become durable when the folder is fsynced; a rename
  becomes durable, on both sides, when either folder is fsynced (it is one journalled
  operation on real filesystems); an inode is created durable but empty, so a file whose
  name was never made durable vanishes, however often its data was fsynced;
- a cut throws the volatile state away: every inode becomes its durable self, and what no
  durable name reaches is gone. From the cut until the remount every request fails with EIO
  (the machine is dead); the client then kills the processes that used the mount and asks
  for a remount, so no kernel cache of the old state survives.

Control commands, one line each over the Unix socket, answered with one JSON line:
  cut                    cut the power now
  arm OP NTH REGEX       cut right after the NTH operation OP (rename, link, unlink, create,
                         mkdir, rmdir, write, setattr, fsync, fsyncdir) whose subject matches
                         REGEX (subject: "path" or "source->target", relative to the mount)
  fired                  whether the armed cut has happened
  disarm                 forget an armed cut; answers whether it had fired
  remount                unmount and mount again (after a cut: the durable state; otherwise
                         everything is made durable first, like a clean shutdown)
  sync                   make everything durable (as if it had been on the disk for long)
  stats                  counters: operations, fsyncs, cuts, nodes
  quit                   unmount and exit
Locks (flock, POSIX) are left to the kernel, which keeps them per mount.
"""

import errno
import json
import os
import re
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import pyfuse3
import trio

BLOCK = 32 * 1024
ENTRY_TIMEOUT = 5.0  # names change only through this mount: the kernel's cache stays true
ATTR_TIMEOUT = 0.0  # ctime moves on link and rename: always ask
CAPACITY_BLOCKS = 1 << 20  # statfs: 4 GiB of 4 KiB blocks


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


def _now() -> int:
    return time.time_ns()


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class Volume:
    """The filesystem's two states and every operation on them, without FUSE."""

    def __init__(self) -> None:
        now = _now()
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
            raise _fail(errno.ESTALE) from None

    def folder(self, ino: int) -> Node:
        found = self.node(ino)
        if not found.is_dir:
            raise _fail(errno.ENOTDIR)
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
            raise _fail(errno.ENOENT)
        self.nodes[ino].seen_as = (folder, name)
        return self.nodes[ino]

    # --- the cut and the triggers -------------------------------------------------------

    def alive(self) -> None:
        if self.dead:
            raise _fail(errno.EIO)

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
            raise _fail(errno.EEXIST)
        if len(name) > 255:
            raise _fail(errno.ENAMETOOLONG)
        now = _now()
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
        child.attributes.ctime_ns = _now()

    def _remove(self, parent: Node, name: bytes) -> Node:
        child = self.nodes[parent.entries.pop(name)]
        child.nlink -= 2 if child.is_dir else 1
        if child.is_dir:
            parent.nlink -= 1
        self._touch(parent)
        child.attributes.ctime_ns = _now()
        return child

    def _touch(self, found: Node) -> None:
        found.attributes.mtime_ns = found.attributes.ctime_ns = _now()

    def unlink(self, folder: int, name: bytes) -> None:
        child = self.child(folder, name)
        if child.is_dir:
            raise _fail(errno.EISDIR)
        self._remove(self.folder(folder), name)
        self.maybe_free(child.ino)
        self.happened("unlink", self.path(folder, name))

    def rmdir(self, folder: int, name: bytes) -> None:
        child = self.child(folder, name)
        if not child.is_dir:
            raise _fail(errno.ENOTDIR)
        if child.entries:
            raise _fail(errno.ENOTEMPTY)
        self._remove(self.folder(folder), name)
        self.maybe_free(child.ino)
        self.happened("rmdir", self.path(folder, name))

    def link(self, ino: int, folder: int, name: bytes) -> Node:
        found = self.node(ino)
        parent = self.folder(folder)
        if found.is_dir:
            raise _fail(errno.EPERM)
        if name in parent.entries:
            raise _fail(errno.EEXIST)
        self._add(parent, name, found)
        self.happened("link", f"{self.path(folder, name)}")
        return found

    def rename(self, old_folder: int, old: bytes, new_folder: int, new: bytes, flags: int) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise _fail(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT: not needed here
        source, target = self.folder(old_folder), self.folder(new_folder)
        moving = self.child(old_folder, old)
        subject = f"{self.path(old_folder, old)}->{self.path(new_folder, new)}"
        replaced_ino = target.entries.get(new)
        if replaced_ino == moving.ino:
            return  # two names of one inode: rename does nothing
        if replaced_ino is not None:
            replaced = self.nodes[replaced_ino]
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _fail(errno.EEXIST)
            if replaced.is_dir and not moving.is_dir:
                raise _fail(errno.EISDIR)
            if moving.is_dir and not replaced.is_dir:
                raise _fail(errno.ENOTDIR)
            if replaced.is_dir and replaced.entries:
                raise _fail(errno.ENOTEMPTY)
        if moving.is_dir and self._inside(new_folder, moving.ino):
            raise _fail(errno.EINVAL)
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


@dataclass
class Handle:
    ino: int
    subject: str  # the path it was opened by, for triggers and counters
    listing: list[tuple[bytes, int]] = field(default_factory=list)


class Operations(pyfuse3.Operations):
    """FUSE's requests, each a method of `Volume`; EIO for all of them after a cut."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, volume: Volume) -> None:
        super().__init__()
        self.volume = volume
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1

    def reset_session(self) -> None:
        """A new mount: the kernel holds no inode and no open file of the old one."""
        self.handles.clear()
        for found in self.volume.nodes.values():
            found.lookups = found.opens = 0
        for ino in list(self.volume.nodes):
            self.volume.maybe_free(ino)

    def _entry(self, found: Node, looked_up: bool = True) -> pyfuse3.EntryAttributes:
        if looked_up:
            found.lookups += 1
        entry = pyfuse3.EntryAttributes()
        attributes = found.attributes
        entry.st_ino = found.ino
        entry.generation = 0
        entry.entry_timeout = ENTRY_TIMEOUT
        entry.attr_timeout = ATTR_TIMEOUT
        entry.st_mode = attributes.mode
        entry.st_nlink = found.nlink
        entry.st_uid, entry.st_gid, entry.st_rdev = attributes.uid, attributes.gid, attributes.rdev
        size = found.content.size if not found.is_dir else 4096
        size = len(found.target) if stat.S_ISLNK(attributes.mode) else size
        entry.st_size = size
        entry.st_blksize = 4096
        entry.st_blocks = -(-size // 512)
        entry.st_atime_ns = attributes.atime_ns
        entry.st_mtime_ns = attributes.mtime_ns
        entry.st_ctime_ns = attributes.ctime_ns
        return entry

    def _open(self, ino: int, subject: str) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(ino, subject)
        self.volume.node(ino).opens += 1
        return fh

    def _handle(self, fh: int) -> Handle:
        try:
            return self.handles[fh]
        except KeyError:
            raise _fail(errno.EBADF) from None

    def _close(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is not None and handle.ino in self.volume.nodes:
            self.volume.nodes[handle.ino].opens -= 1
            self.volume.maybe_free(handle.ino)

    # --- names ---------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx):
        self.volume.alive()
        return self._entry(self.volume.child(parent_inode, name))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            found = self.volume.nodes.get(ino)
            if found is not None:
                found.lookups -= count
                self.volume.maybe_free(ino)

    async def getattr(self, inode, ctx):
        self.volume.alive()
        return self._entry(self.volume.node(inode), looked_up=False)

    async def setattr(self, inode, attr, fields, fh, ctx):
        volume = self.volume
        volume.alive()
        found = volume.node(inode)
        attributes = found.attributes
        if fields.update_size:
            if found.is_dir:
                raise _fail(errno.EISDIR)
            found.content.truncate(attr.st_size)
            attributes.mtime_ns = _now()
        if fields.update_mode:
            attributes.mode = stat.S_IFMT(attributes.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            attributes.uid = attr.st_uid
        if fields.update_gid:
            attributes.gid = attr.st_gid
        if fields.update_atime:
            attributes.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            attributes.mtime_ns = attr.st_mtime_ns
        attributes.ctime_ns = attr.st_ctime_ns if fields.update_ctime else _now()
        subject = self.handles[fh].subject if fh in self.handles else str(inode)
        volume.happened("setattr", subject)
        return self._entry(found, looked_up=False)

    async def readlink(self, inode, ctx):
        self.volume.alive()
        return self.volume.node(inode).target

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self.volume.alive()
        made = self.volume.make(parent_inode, name, mode & ~ctx.umask, ctx.uid, ctx.gid, rdev)
        self.volume.happened("create", self.volume.path(parent_inode, name))
        return self._entry(made)

    async def mkdir(self, parent_inode, name, mode, ctx):
        self.volume.alive()
        mode = stat.S_IFDIR | (mode & ~ctx.umask & 0o7777)
        made = self.volume.make(parent_inode, name, mode, ctx.uid, ctx.gid)
        self.volume.happened("mkdir", self.volume.path(parent_inode, name))
        return self._entry(made)

    async def symlink(self, parent_inode, name, target, ctx):
        self.volume.alive()
        made = self.volume.make(parent_inode, name, stat.S_IFLNK | 0o777, ctx.uid, ctx.gid)
        made.target = bytes(target)
        assert made.durable is not None
        made.durable.target = made.target  # a symlink is created with its target
        self.volume.happened("create", self.volume.path(parent_inode, name))
        return self._entry(made)

    async def unlink(self, parent_inode, name, ctx):
        self.volume.alive()
        self.volume.unlink(parent_inode, name)

    async def rmdir(self, parent_inode, name, ctx):
        self.volume.alive()
        self.volume.rmdir(parent_inode, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.volume.alive()
        self.volume.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.volume.alive()
        return self._entry(self.volume.link(inode, new_parent_inode, new_name))

    # --- files ---------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        self.volume.alive()
        found = self.volume.node(inode)
        if found.is_dir:
            raise _fail(errno.EISDIR)
        return pyfuse3.FileInfo(fh=self._open(inode, self._subject(inode)))

    def _subject(self, ino: int) -> str:
        """The path `ino` was last reached by, for triggers and counters."""
        seen_as = self.volume.node(ino).seen_as
        return self.volume.path(*seen_as) if seen_as else f"#{ino}"

    async def create(self, parent_inode, name, mode, flags, ctx):
        self.volume.alive()
        mode = stat.S_IFREG | (mode & ~ctx.umask & 0o7777)
        made = self.volume.make(parent_inode, name, mode, ctx.uid, ctx.gid)
        subject = self.volume.path(parent_inode, name)
        self.volume.happened("create", subject)
        return pyfuse3.FileInfo(fh=self._open(made.ino, subject)), self._entry(made)

    async def read(self, fh, off, size):
        self.volume.alive()
        return self.volume.node(self._handle(fh).ino).content.read(off, size)

    async def write(self, fh, off, buf):
        self.volume.alive()
        handle = self._handle(fh)
        found = self.volume.node(handle.ino)
        found.content.write(off, bytes(buf))
        found.attributes.mtime_ns = found.attributes.ctime_ns = _now()
        self.volume.happened("write", handle.subject)
        return len(buf)

    async def flush(self, fh):
        return  # close() makes nothing durable

    async def release(self, fh):
        self._close(fh)

    async def fsync(self, fh, datasync):
        self.volume.alive()
        handle = self._handle(fh)
        self.volume.fsync(handle.ino, bool(datasync), handle.subject)

    # --- folders -------------------------------------------------------------------------

    async def opendir(self, inode, ctx):
        self.volume.alive()
        self.volume.folder(inode)
        return self._open(inode, self.volume.path(inode))

    async def readdir(self, fh, start_id, token):
        self.volume.alive()
        handle = self._handle(fh)
        if start_id == 0:  # (re)started: list the folder as it is now
            handle.listing = list(self.volume.folder(handle.ino).entries.items())
        for index in range(start_id, len(handle.listing)):
            name, ino = handle.listing[index]
            found = self.volume.nodes.get(ino)
            if found is None:
                continue
            if not pyfuse3.readdir_reply(token, name, self._entry(found), index + 1):
                found.lookups -= 1  # not passed on: the kernel holds no reference
                return

    async def releasedir(self, fh):
        self._close(fh)

    async def fsyncdir(self, fh, datasync):
        self.volume.alive()
        handle = self._handle(fh)
        self.volume.fsyncdir(handle.ino, handle.subject)

    async def statfs(self, ctx):
        self.volume.alive()
        used = sum(-(-n.content.size // 4096) for n in self.volume.nodes.values())
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = CAPACITY_BLOCKS
        data.f_bfree = data.f_bavail = max(0, CAPACITY_BLOCKS - used)
        data.f_files = 1 << 20
        data.f_ffree = data.f_favail = (1 << 20) - len(self.volume.nodes)
        data.f_namemax = 255
        return data


# --- the server ------------------------------------------------------------------------------


class Server:
    def __init__(self, mountpoint: str, control: str) -> None:
        self.mountpoint = mountpoint
        self.control = control
        self.volume = Volume()
        self.operations = Operations(self.volume)
        self.remounted: trio.Event | None = None
        self.quitting = False

    def _mount(self) -> None:
        options = set(pyfuse3.default_options) | {"fsname=powerfs", "subtype=powerfs"}
        pyfuse3.init(self.operations, self.mountpoint, options)

    async def run(self) -> None:
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(self.control)
        listener.listen()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_control, listener, nursery)
            self._mount()
            while True:
                await pyfuse3.main(min_tasks=1, max_tasks=1)
                pyfuse3.close(unmount=True)
                if self.quitting:
                    break
                self.operations.reset_session()
                self.volume.dead = False
                self._mount()
                assert self.remounted is not None
                self.remounted.set()
            nursery.cancel_scope.cancel()

    async def _serve_control(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            connection, _ = await listener.accept()
            nursery.start_soon(self._answer, connection)

    async def _answer(self, connection: trio.socket.SocketType) -> None:
        async with trio.SocketStream(connection) as stream:
            buffer = b""
            while data := await stream.receive_some(4096):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        reply = await self._command(line.decode().split(" ", 3))
                    except Exception as error:  # a bad command must not stop the disk
                        reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def _command(self, words: list[str]) -> dict[str, object]:
        volume = self.volume
        verb = words[0]
        if verb == "cut":
            volume.cut()
        elif verb == "arm":
            operation, nth, pattern = words[1], int(words[2]), words[3]
            volume.trigger = Trigger(operation, re.compile(pattern), nth)
        elif verb == "disarm":
            fired = volume.trigger is not None and volume.trigger.fired
            volume.trigger = None
            return {"ok": True, "fired": fired}
        elif verb == "fired":
            return {"ok": True, "fired": volume.trigger is not None and volume.trigger.fired}
        elif verb == "sync":
            volume.sync()
        elif verb in ("remount", "quit"):
            if not volume.dead:
                volume.sync()  # a clean unmount writes everything back
            self.quitting = verb == "quit"
            self.remounted = trio.Event()
            pyfuse3.terminate()
            if verb == "remount":
                await self.remounted.wait()
        elif verb == "stats":
            return {"ok": True, "counts": dict(volume.counts), "nodes": len(volume.nodes)}
        else:
            return {"ok": False, "error": f"unknown command {verb}"}
        return {"ok": True}


def main() -> None:
    mountpoint, control = sys.argv[1:3]
    trio.run(Server(mountpoint, control).run)


if __name__ == "__main__":
    main()
