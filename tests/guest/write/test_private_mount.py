"""The private mount under put, rm and mkdir: the kernel's page cache between the tool and
the daemon (vhdfs/fuse/daemon.py, MountConfig.page_cache).

ntfs-3g writes its device in 4 KiB pieces, many again and again to the same metadata: a
128 MiB put made about 160,000 requests of the daemon through direct I/O (24 s, against 1.6 s
for ntfs-3g on a plain file). Through the page cache the daemon gets a few large writes when
the tool syncs or closes the file, and the kernel no longer asks for an attribute or an
extended attribute before each write. These tests count what reaches the daemon (its system
calls, /proc/PID/io) and check that every byte still lands in the child, and only there."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from tests.guest.write.conftest import check_base, child_of
from vhdfs.fuse.private import private_mount
from vhdfs.resolve import open_chain

PIECE = 4096
PIECES = 512  # 2 MiB in 4 KiB writes, each piece written twice (as ntfs-3g rewrites metadata)


def syscalls(pid: int) -> tuple[int, int]:
    """The daemon's read and write system calls so far (FUSE requests and replies among them)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def test_small_writes_reach_the_daemon_coalesced_and_land_in_the_child(windows_base, tmp_path):
    child = child_of(windows_base, tmp_path)
    rnd = random.Random(5)
    pieces = [rnd.randbytes(PIECE) for _ in range(PIECES)]
    chain = open_chain(str(child), writable=True)
    with private_mount(chain) as mount:
        disk = mount.file("disk.raw")
        start = 16 * 1024 * 1024  # inside the disk, clear of the partition table
        before = syscalls(mount.pid)
        fd = os.open(disk, os.O_RDWR)
        try:
            for again in range(2):
                for index, piece in enumerate(pieces):
                    data = piece if again else bytes(PIECE)  # zeros first, then the data
                    assert os.pwrite(fd, data, start + index * PIECE) == PIECE
            os.fsync(fd)
        finally:
            os.close(fd)
        reads, writes = (after - first for after, first in zip(syscalls(mount.pid), before, strict=True))
        # Through direct I/O: one request (a read and a reply) and at least one pwrite into
        # the child per piece written, 2 x 512 of each; here a few large writes.
        assert writes < PIECES // 4, (reads, writes)
        assert reads < PIECES // 4, (reads, writes)
        with pytest.raises(OSError) as no_attributes:  # asked of no daemon
            os.getxattr(disk, "user.vhdfs.pid")
        assert no_attributes.value.errno in (errno.EOPNOTSUPP, errno.ENODATA)
    check_base(windows_base)
    with open_chain(str(child)) as reread:
        assert reread.read(start, PIECES * PIECE) == b"".join(pieces)
