"""A FUSE filesystem whose power can be cut: what was not fsynced is lost, as on a real disk.

Run by `powerfs.PowerFS` as `python powerfs_server.py MOUNTPOINT CONTROL_SOCKET`; it serves
one mount from memory (powerfs_volume.py: the durability rules, like LazyFS's, which Jepsen
uses), in one thread (trio), so every operation is atomic with respect to a cut. From the
cut until the remount every request fails with EIO (the machine is dead); the client then
kills the processes that used the mount and asks for a remount, so no kernel cache of the
old state survives.

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
  links off              refuse hard links from now on (EPERM), as vfat, exFAT and many
                         shares do
  noreplace off          refuse renames that must not replace (EINVAL), as NFS does
  quit                   unmount and exit
Locks (flock, POSIX) are left to the kernel, which keeps them per mount.
"""

import errno
import json
import re
import stat
import sys
from dataclasses import dataclass, field

import pyfuse3
import trio
from powerfs_volume import Node, Trigger, Volume, fail, now_ns

ENTRY_TIMEOUT = 5.0  # names change only through this mount: the kernel's cache stays true
ATTR_TIMEOUT = 0.0  # ctime moves on link and rename: always ask
CAPACITY_BLOCKS = 1 << 20  # statfs: 4 GiB of 4 KiB blocks


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
        self.links = True  # `links off`: a filesystem without hard links
        self.noreplace = True  # `noreplace off`: nor renames that cannot replace
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
            raise fail(errno.EBADF) from None

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
                raise fail(errno.EISDIR)
            found.content.truncate(attr.st_size)
            attributes.mtime_ns = now_ns()
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
        attributes.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now_ns()
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
        if flags and not self.noreplace:
            raise fail(errno.EINVAL)
        self.volume.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.volume.alive()
        if not self.links:
            raise fail(errno.EPERM)
        return self._entry(self.volume.link(inode, new_parent_inode, new_name))

    # --- files ---------------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        self.volume.alive()
        found = self.volume.node(inode)
        if found.is_dir:
            raise fail(errno.EISDIR)
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
        found.attributes.mtime_ns = found.attributes.ctime_ns = now_ns()
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
            if not volume.dead:  # an armed cut may have come first
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
        elif verb == "links" and words[1:] == ["off"]:
            self.operations.links = False
        elif verb == "noreplace" and words[1:] == ["off"]:
            self.operations.noreplace = False
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
