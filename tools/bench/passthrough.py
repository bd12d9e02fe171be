"""The ceiling for a Python FUSE file system here: one flat raw file, read-only, passed through.

    python -m tools.bench.passthrough RAW MOUNTPOINT [--threads]

Shows RAW as MOUNTPOINT/disk.raw with `FileInfo(direct_io=True)` (1 MiB requests) and answers
each read with one inline `os.pread` (or, with --threads, through `trio.to_thread`, to
measure what offloading costs). Runs in the foreground until unmounted or interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat

import pyfuse3
import trio

FILE_INODE = pyfuse3.ROOT_INODE + 1
NAME = b"disk.raw"


class Passthrough(pyfuse3.Operations):
    def __init__(self, path: str, threads: bool) -> None:
        super().__init__()
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.threads = threads
        self.limiter = trio.CapacityLimiter(8)

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o444, 1, self.size
        attrs.st_blksize = 4096
        attrs.st_blocks = -(-attrs.st_size // 512)
        return attrs

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INODE)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attrs(FILE_INODE), 1)

    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        if self.threads:
            return await trio.to_thread.run_sync(os.pread, self.fd, size, off, limiter=self.limiter)
        return os.pread(self.fd, size, off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw")
    parser.add_argument("mountpoint")
    parser.add_argument("--threads", action="store_true", help="read in worker threads")
    args = parser.parse_args()
    ops = Passthrough(args.raw, args.threads)
    options = set(pyfuse3.default_options) | {"fsname=passthrough", "ro"}
    pyfuse3.init(ops, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    except KeyboardInterrupt:
        pass
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
