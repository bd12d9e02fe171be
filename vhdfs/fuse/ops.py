"""FUSE requests answered from a chain: the pyfuse3 protocol adapter.

Every handler raises only `FUSEError`. A failure of the chain (`VhdfsError`, `OSError`)
becomes that request's errno (EIO unless the error carries another), is logged once per
damaged block, and the file system goes on serving everything else.

Where the bytes are read: a local chain is read inline on the event loop. Measured here,
an inline `os.pread` of a page-cached 4 KiB block serves about five times more requests per
second than one handed to `trio.to_thread`, and the chain's read path is a few dictionary
look-ups in front of that pread. A chain with a remote layer (reads may wait on the
network) is read and written in worker threads under a capacity limiter, so one slow
request never stalls the others. `fsync` and the periodic metadata flush always run in a
thread: they wait for the disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from vhdfs.chain import Chain
from vhdfs.errors import ImageIOError, VhdfsError
from vhdfs.fuse.tree import DiskFile
from vhdfs.mounttable import XATTR_IMAGE, XATTR_PID, XATTR_STATS, XATTR_WRITABLE
from vhdfs.secrets import scrub

log = logging.getLogger("vhdfs")

ROOT = pyfuse3.ROOT_INODE
# Names and sizes never change while mounted, so the kernel may keep them long. Times do
# change on a writable mount: every write advances the mtime and ctime of every file (they
# are all windows on the one disk), and there the kernel keeps no attributes, so that `stat`
# sees each write at once (an upload of MNT/disk.vhd compares times before and after it).
# A read-only mount's times never change: its files are stable sources.
ATTR_TIMEOUT = 60.0
WRITABLE_ATTR_TIMEOUT = 0.0
WORKER_THREADS = 8
LOGGED_FAILURES_LIMIT = 4096  # distinct failures remembered for "logged once"



def chain_is_remote(chain: Chain) -> bool:
    return any(layer.source.remote for layer in chain.layers)


class ChainOperations(pyfuse3.Operations):
    """The files of `tree.build_tree` over one chain."""

    enable_writeback_cache = False

    def __init__(self, chain: Chain, files: list[DiskFile], *, writable: bool,
                 offload: bool | None = None,
                 stats: Callable[[], dict[str, Any]] | None = None,
                 page_cache: bool = False) -> None:
        super().__init__()
        self.page_cache = page_cache  # MountConfig.page_cache: why and where
        self.enable_writeback_cache = page_cache  # read by pyfuse3.init
        self.stats = stats  # `mount --stats`: the traffic totals, offered as XATTR_STATS
        self.chain = chain
        self.files = {f.inode: f for f in files}
        self.names = {f.name.encode(): f for f in files}
        self.writable = writable
        self.offload = chain_is_remote(chain) if offload is None else offload
        self.limiter = trio.CapacityLimiter(WORKER_THREADS)
        self.dirty = False  # written since the last flush
        self.uid, self.gid = os.getuid(), os.getgid()
        self.mounted_ns = self.changed_ns = time.time_ns()  # changed: the last write
        # Times that move with every write: a writable mount's attributes are asked again
        # each time. Not under the page cache, where the kernel keeps them itself and a
        # write would otherwise cost a GETATTR.
        self.attr_timeout = WRITABLE_ATTR_TIMEOUT if writable and not page_cache else \
            ATTR_TIMEOUT
        self._logged: set[tuple] = set()

    # ---------------------------------------------------------------- errors
    def _failure(self, action: str, file: DiskFile | None, offset: int, exc: BaseException
                 ) -> pyfuse3.FUSEError:
        """The FUSEError for a failed request; the failure is logged once per block and kind."""
        code = exc.errno if isinstance(exc, OSError | ImageIOError) else None
        if not isinstance(code, int) or code <= 0:
            code = errno.EIO
        unit = (file.start + offset) // self.chain.unit if file else -1
        key = (action, type(exc).__name__, code, unit)
        if key not in self._logged and len(self._logged) < LOGGED_FAILURES_LIMIT:
            self._logged.add(key)
            where = f"{file.name} at offset {offset}" if file else "the mount"
            if isinstance(exc, VhdfsError | OSError):
                log.warning("%s of %s failed, returning %s: %s", action, where,
                            errno.errorcode.get(code, code), exc)
            else:  # a bug: keep serving, but leave the trace for the report
                log.error("%s of %s failed with an internal error, returning EIO", action, where,
                          exc_info=exc)
        return pyfuse3.FUSEError(code)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ---------------------------------------------------------------- names and attributes
    def _file(self, inode: int) -> DiskFile:
        found = self.files.get(inode)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_atime_ns = self.mounted_ns
        attrs.st_mtime_ns = attrs.st_ctime_ns = self.changed_ns
        attrs.entry_timeout = ATTR_TIMEOUT
        attrs.attr_timeout = self.attr_timeout
        attrs.st_blksize = 4096
        if inode == ROOT:
            attrs.st_mode = stat.S_IFDIR | 0o755
            attrs.st_nlink = 2
            return attrs
        file = self._file(inode)
        attrs.st_mode = stat.S_IFREG | (0o644 if file.writable else 0o444)
        attrs.st_nlink = 1
        attrs.st_size = file.size
        attrs.st_blocks = -(-file.size // 512)
        return attrs

    async def getattr(self, inode, ctx=None):
        return self._attributes(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        file = self.names.get(name)
        if file is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(file.inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode != ROOT:
            file = self._file(inode)
            if fields.update_size and attr.st_size != file.size:
                raise pyfuse3.FUSEError(errno.EPERM)  # a disk has a fixed size
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attributes(inode)  # time changes are accepted and forgotten

    async def opendir(self, inode, ctx):
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        for index, file in enumerate(self.files.values()):
            if index < start_id:
                continue
            if not pyfuse3.readdir_reply(token, file.name.encode(), self._attributes(file.inode),
                                         index + 1):
                return

    async def statfs(self, ctx):
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = sum(-(-f.size // 4096) for f in self.files.values())
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.files) + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    async def getxattr(self, inode, name, ctx):
        if self.page_cache:
            # The kernel asks for security.capability before every cached write (FUSE
            # clears SB_NOSEC): ENOSYS makes it stop asking for any attribute, a round trip
            # saved per write. The private mount's owner knows its daemon without them.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if inode == ROOT:
            if name == XATTR_PID:
                return str(os.getpid()).encode()
            if name == XATTR_IMAGE:  # readable by every user who sees the mount: no secret
                return os.fsencode(scrub(self.chain.top.name))
            if name == XATTR_WRITABLE:
                return b"1" if self.writable else b"0"
            if name == XATTR_STATS and self.stats is not None:  # counts only: no secret
                return json.dumps(self.stats()).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        if inode != ROOT:
            return []
        return [XATTR_PID, XATTR_IMAGE, XATTR_WRITABLE] + ([XATTR_STATS] if self.stats else [])

    # ---------------------------------------------------------------- data
    async def open(self, inode, flags, ctx):
        if inode == ROOT:
            raise pyfuse3.FUSEError(errno.EISDIR)
        file = self._file(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY and not file.writable:
            # Checked here, not only by the mode bits: root passes those.
            raise pyfuse3.FUSEError(errno.EACCES if self.writable else errno.EROFS)
        # direct_io: requests of up to 1 MiB straight from the caller's buffer, no second copy
        # in the kernel's page cache (the chain's files are cached there already).
        return pyfuse3.FileInfo(fh=inode, direct_io=not self.page_cache)

    def _read_disk(self, offset: int, length: int) -> bytearray:
        # Filled in place and handed to FUSE as it is: no copy into a bytes object.
        buf = bytearray(length)
        self.chain.read_into(offset, memoryview(buf))
        return buf

    async def read(self, fh, off, size):
        file = self.files.get(fh)
        if file is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            end = min(off + size, file.size)
            if off >= end:
                return b""
            disk_end = min(end, file.length)
            data = b""
            if off < disk_end:
                if self.offload:
                    data = await self._in_thread(self._read_disk, file.start + off, disk_end - off)
                else:
                    data = self._read_disk(file.start + off, disk_end - off)
            if end > file.length:  # the fixed tail (the footer of disk.vhd)
                data += file.tail[max(off - file.length, 0):end - file.length]
            return data
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise self._failure("read", file, off, exc) from None

    async def write(self, fh, off, buf):
        file = self.files.get(fh)
        if file is None or not file.writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        if off >= file.length:
            raise pyfuse3.FUSEError(errno.ENOSPC)  # a disk does not grow
        count = min(len(buf), file.length - off)
        data = buf if count == len(buf) else memoryview(buf)[:count]
        try:
            self.dirty = True
            if self.offload:
                await self._in_thread(self.chain.write, file.start + off, data)
            else:
                self.chain.write(file.start + off, data)
        except Exception as exc:
            raise self._failure("write", file, off, exc) from None
        finally:  # a failed write may have changed some bytes too
            self._changed()
        return count

    def _changed(self) -> None:
        """Advance the times of every file: strictly, even within one clock tick."""
        self.changed_ns = max(time.time_ns(), self.changed_ns + 1)

    async def fsync(self, fh, datasync):
        await self.flush_chain("fsync", self.files.get(fh))

    async def flush_chain(self, action: str = "flush", file: DiskFile | None = None) -> None:
        """Make every acknowledged write durable (data, then bitmaps, then BAT)."""
        if not self.writable:
            return
        was_dirty, self.dirty = self.dirty, False
        try:
            await trio.to_thread.run_sync(self.chain.flush)
        except Exception as exc:
            self.dirty = self.dirty or was_dirty
            raise self._failure(action, file, 0, exc) from None

    async def flush_periodically(self, interval: float) -> None:
        """Flush every `interval` seconds while there are unflushed writes, so that a killed
        daemon loses at most that much; a failure is logged and retried."""
        while True:
            await trio.sleep(interval)
            if self.dirty:
                try:
                    await self.flush_chain("periodic flush")
                except pyfuse3.FUSEError:
                    pass

    async def release(self, fh):
        pass

    async def flush(self, fh):
        pass  # close(2): durability is fsync's job (and the periodic flush's)

