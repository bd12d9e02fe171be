"""File times of a mount, asked of the FUSE operations in-process (no mount; a fake request
context as s3ql's tests use): a writable mount's writes advance the mtime and ctime of every
file and the kernel keeps no attributes; a read-only mount's times never move."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest
import trio

from tests.fuse.conftest import MiB
from vhdfs.create import create_dynamic
from vhdfs.fuse.ops import ATTR_TIMEOUT, ChainOperations
from vhdfs.fuse.tree import build_tree
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

NAMES = ("disk.raw", "disk.vhd", "p1", "p2")


@dataclass
class FakeContext:
    """What a request carries (pyfuse3.RequestContext); the operations do not look at it."""

    uid: int = 0
    gid: int = 0
    pid: int = 1
    umask: int = 0o022


def disk_with_partitions(folder: Path) -> Path:
    """An 8 MiB dynamic VHD whose first sector is an MBR written by sfdisk: p1 and p2."""
    raw = folder / "table.raw"
    with open(raw, "wb") as handle:
        handle.truncate(8 * MiB)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], check=True,
                   input="label: dos\nstart=2048, size=4096, type=7\nstart=6144, size=8192\n",
                   text=True, capture_output=True)
    image = folder / "disk.vhd"
    create_dynamic(image, 8 * MiB, 256 * 1024)
    with Layer(LocalFile(image, writable=True), writable=True) as layer:
        layer.write(0, raw.read_bytes()[:512])
    return image


def operations(image: Path, *, writable: bool) -> tuple[ChainOperations, dict[str, int]]:
    chain = open_chain(str(image), writable=writable)
    files = build_tree(chain, writable=writable)
    assert tuple(f.name for f in files) == NAMES
    return ChainOperations(chain, files, writable=writable), {f.name: f.inode for f in files}


def attributes(ops: ChainOperations, inodes: dict[str, int]) -> dict[str, pyfuse3.EntryAttributes]:
    async def ask() -> dict[str, pyfuse3.EntryAttributes]:
        return {name: await ops.getattr(inode, FakeContext()) for name, inode in inodes.items()}
    return trio.run(ask)


def write(ops: ChainOperations, inode: int, offset: int, data: bytes) -> int:
    async def send() -> int:
        info = await ops.open(inode, 0o2, FakeContext())  # O_RDWR
        return await ops.write(info.fh, offset, data)
    return trio.run(send)


def read(ops: ChainOperations, inode: int, offset: int, size: int) -> bytes:
    async def ask() -> bytes:
        info = await ops.open(inode, 0, FakeContext())
        return await ops.read(info.fh, offset, size)
    return trio.run(ask)


@pytest.mark.parametrize("target", ["disk.raw", "p1", "p2"])
def test_a_write_advances_mtime_and_ctime_of_every_file(tmp_path: Path, target: str) -> None:
    ops, inodes = operations(disk_with_partitions(tmp_path), writable=True)
    try:
        before = attributes(ops, inodes)
        assert write(ops, inodes[target], 4096, b"\x5a" * 4096) == 4096
        after = attributes(ops, inodes)
        for name in NAMES:
            assert after[name].st_mtime_ns > before[name].st_mtime_ns, name
            assert after[name].st_ctime_ns > before[name].st_ctime_ns, name
            assert after[name].st_atime_ns == before[name].st_atime_ns, name
            assert after[name].st_size == before[name].st_size, name
            assert after[name].attr_timeout == 0, name  # stat asks again: sees each write
        # Two writes in one clock tick still advance the times (a strict order).
        write(ops, inodes[target], 0, b"\x01" * 512)
        first = attributes(ops, inodes)["disk.vhd"].st_mtime_ns
        write(ops, inodes[target], 0, b"\x02" * 512)
        assert attributes(ops, inodes)["disk.vhd"].st_mtime_ns > first
    finally:
        ops.chain.close()


def test_a_read_only_mount_keeps_its_times(tmp_path: Path) -> None:
    ops, inodes = operations(disk_with_partitions(tmp_path), writable=False)
    try:
        before = attributes(ops, inodes)
        time.sleep(0.01)
        assert len(read(ops, inodes["disk.vhd"], 0, 1 << 20)) == 1 << 20
        with pytest.raises(pyfuse3.FUSEError):
            write(ops, inodes["disk.raw"], 0, b"\x01" * 512)
        after = attributes(ops, inodes)
        for name in NAMES:
            was, now = before[name], after[name]
            assert (now.st_mtime_ns, now.st_ctime_ns, now.st_atime_ns, now.st_size) == \
                (was.st_mtime_ns, was.st_ctime_ns, was.st_atime_ns, was.st_size), name
            assert now.st_mtime_ns == now.st_ctime_ns == ops.mounted_ns
            assert now.attr_timeout == ATTR_TIMEOUT
    finally:
        ops.chain.close()
