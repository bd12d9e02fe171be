"""A tiny FUSE error target and write logger: one folder passed through.

    python errorfs.py BACKING_DIR MOUNTPOINT [--eio NAME:START:LENGTH ...] [--log FILE]

Reads of NAME that touch [START, START+LENGTH) fail with EIO, as a disk with a bad range
would; everything else (reads, writes, fsync, truncation of the backing file) passes through.
With --log, every write, fsync and truncate that reaches the file system is appended to FILE
(records of `LOG_RECORD` + name + data), as dm-log-writes records a block device: the crash
tests replay them. Prints "ready" once mounted; ends when unmounted. Used by the I/O fault
and crash tests, where no device-mapper target is available.
"""

from __future__ import annotations

import argparse
import errno
import os
import struct
import sys

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
# kind (b"W" write, b"S" fsync, b"T" truncate), name length, offset (or size), data length
LOG_RECORD = struct.Struct(">cHQI")


def read_log(path: str | os.PathLike[str]) -> list[tuple[str, str, int, bytes]]:
    """(kind "write"|"sync"|"truncate", file name, offset or size, data) per record."""
    raw = open(path, "rb").read()
    out, at = [], 0
    kinds = {b"W": "write", b"S": "sync", b"T": "truncate"}
    while at + LOG_RECORD.size <= len(raw):
        kind, name_len, offset, length = LOG_RECORD.unpack_from(raw, at)
        at += LOG_RECORD.size
        name = raw[at:at + name_len].decode()
        at += name_len
        out.append((kinds[kind], name, offset, raw[at:at + length]))
        at += length
    return out


class ErrorFS(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, backing: str, bad: dict[str, list[tuple[int, int]]],
                 log: str | None = None) -> None:
        super().__init__()
        self.backing = backing
        self.bad = bad
        self.log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else None
        self.inodes: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def _log(self, kind: bytes, fh_or_path: int | str, offset: int, data: bytes = b"") -> None:
        if self.log_fd is None:
            return
        path = os.readlink(f"/proc/self/fd/{fh_or_path}") if isinstance(fh_or_path, int) else fh_or_path
        name = os.path.basename(path).encode()
        # One write per record: the test reads the log while this runs.
        os.write(self.log_fd, LOG_RECORD.pack(kind, len(name), offset, len(data)) + name + data)

    def _inode(self, name: str) -> int:
        if name not in self.inodes:
            inode = ROOT + 1 + len(self.inodes)
            self.inodes[name], self.names[inode] = inode, name
        return self.inodes[name]

    def _path(self, inode: int) -> str:
        return self.backing if inode == ROOT else os.path.join(self.backing, self.names[inode])

    async def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        try:
            info = os.lstat(self._path(inode))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        attr = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
                     "st_mtime_ns", "st_ctime_ns"):
            setattr(attr, name, getattr(info, name))
        attr.st_ino = inode
        attr.st_blksize, attr.st_blocks = 512, info.st_blocks
        attr.entry_timeout = attr.attr_timeout = 0  # sizes change under us (truncation tests)
        return attr

    async def getattr(self, inode, ctx=None):
        return await self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        text = os.fsdecode(name)
        if parent_inode != ROOT or not os.path.lexists(os.path.join(self.backing, text)):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self._attr(self._inode(text))

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        for index, name in enumerate(sorted(os.listdir(self.backing))):
            if index < start_id:
                continue
            attr = await self._attr(self._inode(name))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, index + 1):
                return

    async def open(self, inode, flags, ctx):
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        return pyfuse3.FileInfo(fh=fd, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fh}"))
        for start, length in self.bad.get(name, []):
            if off < start + length and start < off + size:
                raise pyfuse3.FUSEError(errno.EIO)
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        try:
            done = os.pwrite(fh, buf, off)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        self._log(b"W", fh, off, bytes(buf[:done]))
        return done

    async def fsync(self, fh, datasync):
        os.fsync(fh)
        self._log(b"S", fh, 0)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        os.close(fh)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if fields.update_size:
            os.truncate(self._path(inode), attr.st_size)
            self._log(b"T", self._path(inode), attr.st_size)
        return await self._attr(inode)

    async def statfs(self, ctx):
        info = os.statvfs(self.backing)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                     "f_ffree", "f_favail", "f_namemax"):
            setattr(out, name, getattr(info, name))
        return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--eio", action="append", default=[], metavar="NAME:START:LENGTH")
    parser.add_argument("--log", help="append every write, fsync and truncate to this file")
    args = parser.parse_args()
    bad: dict[str, list[tuple[int, int]]] = {}
    for item in args.eio:
        name, start, length = item.rsplit(":", 2)
        bad.setdefault(name, []).append((int(start), int(length)))
    ops = ErrorFS(os.path.abspath(args.backing), bad, args.log)
    options = set(pyfuse3.default_options) | {"fsname=errorfs"}
    options.discard("default_permissions")
    pyfuse3.init(ops, args.mountpoint, options)
    print("ready", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
