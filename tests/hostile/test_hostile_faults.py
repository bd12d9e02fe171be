"""I/O faults: EIO in one range, a file truncated while in use, ENOSPC during a block
allocation. Each fails that request only, with the right errno, and leaves the image
checkable and intact.

The EIO comes from a real file system: tests/hostile/errorfs.py, a FUSE pass-through of our
own that fails reads of chosen ranges (this machine has no device-mapper). ENOSPC comes from a
real tmpfs mounted with a size limit. The same faults are tried through the API and through
`vhdfs mount`.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.vhdimages import BLOCK_SIZE, KIB, MIB, make_child, make_dynamic, pattern, read_footer
from vhdfs.errors import ImageIOError
from vhdfs.maintain.check import check_image
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.base import Source

BASE_WRITES = ((0, 64 * KIB), (2 * BLOCK_SIZE, 256 * KIB), (5 * BLOCK_SIZE, 8 * KIB))
CHILD_WRITES = ((1024, 1536), (2 * BLOCK_SIZE + 4096, 4096))
VHDFS = [sys.executable, "-m", "vhdfs"]


def build_chain(folder: Path) -> tuple[Path, Path, bytes]:
    """base.vhd and child.vhd in `folder`, and the flat disk they show."""
    base = make_dynamic(folder / "base.vhd", writes=BASE_WRITES)
    child = make_child(folder / "child.vhd", base, writes=CHILD_WRITES)
    with open_chain(str(child)) as chain:
        flat = chain.read(0, chain.size)
    assert flat[2 * BLOCK_SIZE:2 * BLOCK_SIZE + 4096] == pattern(2 * BLOCK_SIZE, 4096)
    return base, child, flat


def block_data_offset(path: Path, index: int) -> int:
    with open_chain(str(path)) as chain:
        offset = chain.top.block_data_offset(index)
    assert offset is not None
    return offset


def check_clean(image: Path, **options: object) -> None:
    report = check_image(str(image), OpenOptions(**options))
    assert report.exit_code == 0, report.as_dict()


# ------------------------------------------------------------------ EIO, injected
class FailingSource(Source):
    """Reads touching [start, end) fail with EIO until `healed`."""

    def __init__(self, inner: Source, start: int, end: int) -> None:
        self.inner, self.start, self.end = inner, start, end
        self.name, self.writable, self.remote = inner.name, inner.writable, inner.remote
        self.healed = False
        self.failures = 0

    def size(self) -> int:
        return self.inner.size()

    def read_at(self, offset: int, length: int) -> bytes:
        if not self.healed and offset < self.end and self.start < offset + length:
            self.failures += 1
            raise ImageIOError(f"{self.name}: reading {length} bytes at offset {offset} failed: "
                               "Input/output error", errno.EIO)
        return self.inner.read_at(offset, length)

    def identity(self) -> tuple:
        return self.inner.identity()

    def close(self) -> None:
        self.inner.close()


def test_eio_fails_only_the_reads_that_touch_it_and_nothing_sticks(tmp_path: Path) -> None:
    base, child, flat = build_chain(tmp_path)
    bad = block_data_offset(base, 2) + 64 * KIB  # inside base block 2, past the child's sectors
    with open_chain(str(child)) as chain:
        source = FailingSource(chain.layers[1].source, bad, bad + 4096)
        chain.layers[1].source = source
        hit = 2 * BLOCK_SIZE + 64 * KIB
        with pytest.raises(ImageIOError) as info:
            chain.read(hit - 512, 8192)
        assert info.value.errno == errno.EIO and "base.vhd" in str(info.value)
        # Every other range reads right, including the rest of the same block.
        for offset in (0, 2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 4096, hit + 4096, 5 * BLOCK_SIZE):
            assert chain.read(offset, 4096) == flat[offset:offset + 4096]
        # The failure is not cached: once the range reads again, so does the chain.
        source.healed = True
        assert chain.read(hit - 512, 8192) == flat[hit - 512:hit + 7680]
    check_clean(child)


def test_eio_in_a_bitmap_fails_that_block_only(tmp_path: Path) -> None:
    base, child, flat = build_chain(tmp_path)
    bitmap = block_data_offset(child, 0) - 512  # the child's block 0 bitmap sector
    with open_chain(str(child)) as chain:
        source = FailingSource(chain.layers[0].source, bitmap, bitmap + 512)
        chain.layers[0].source = source
        with pytest.raises(ImageIOError) as info:
            chain.read(0, 4096)
        assert info.value.errno == errno.EIO
        assert chain.read(2 * BLOCK_SIZE, 64 * KIB) == flat[2 * BLOCK_SIZE:2 * BLOCK_SIZE + 64 * KIB]
        source.healed = True
        assert chain.read(0, 4096) == flat[:4096]


# ------------------------------------------------------------------ EIO from a real file system
def test_eio_from_the_file_system_through_the_api_and_a_mount(tmp_path: Path, mounts) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    base, child, flat = build_chain(backing)
    bad = block_data_offset(base, 2) + 64 * KIB
    faulty = tmp_path / "faulty"
    mounts.errorfs(backing, faulty, [("base.vhd", bad, 4096)])
    image = faulty / "child.vhd"
    hit = 2 * BLOCK_SIZE + 64 * KIB

    # The API: LocalFile turns the real EIO into ImageIOError naming the file and offset.
    with open_chain(str(image)) as chain:
        with pytest.raises(ImageIOError) as info:
            chain.read(hit, 4096)
        assert info.value.errno == errno.EIO
        assert "base.vhd" in str(info.value) and "offset" in str(info.value)
        assert chain.read(0, 64 * KIB) == flat[:64 * KIB]
    # The command line: exit 5, one line naming the file.
    done = subprocess.run([*VHDFS, "convert", str(image), str(tmp_path / "flat.raw"), "--to", "raw"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 5, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vhdfs: error:")]
    assert len(errors) == 1 and "base.vhd" in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "flat.raw").exists()

    # A mount: that request gets EIO, the others their data, and the mount keeps serving.
    mount = mounts.vhdfs(image, tmp_path / "mnt")
    disk = mount.mountpoint / "disk.raw"
    fd = os.open(disk, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failed:
            os.pread(fd, 4096, hit)
        assert failed.value.errno == errno.EIO
        for offset in (0, 2 * BLOCK_SIZE, hit + 4096, 5 * BLOCK_SIZE):
            assert os.pread(fd, 4096, offset) == flat[offset:offset + 4096]
        with pytest.raises(OSError):
            os.pread(fd, 4096, hit)
        assert os.pread(fd, 4096, 0) == flat[:4096]
    finally:
        os.close(fd)
    # The image itself is intact: the same files read right without the fault.
    with open_chain(str(backing / "child.vhd")) as chain:
        assert chain.read(0, chain.size) == flat
    check_clean(backing / "child.vhd")


# ------------------------------------------------------------------ truncated while in use
def test_parent_truncated_while_open(tmp_path: Path) -> None:
    base, child, flat = build_chain(tmp_path)
    cut = block_data_offset(base, 2) + 128 * KIB
    with open_chain(str(child)) as chain:
        assert chain.read(0, chain.size) == flat
        os.truncate(base, cut)
        with pytest.raises(ImageIOError) as info:
            chain.read(5 * BLOCK_SIZE, 4096)  # beyond the cut
        assert info.value.errno == errno.EIO and "truncated" in str(info.value)
        assert "base.vhd" in str(info.value)
        # What lies before the cut, and the child's own sectors, still read.
        assert chain.read(0, 64 * KIB) == flat[:64 * KIB]
        assert chain.read(2 * BLOCK_SIZE, 64 * KIB) == flat[2 * BLOCK_SIZE:2 * BLOCK_SIZE + 64 * KIB]
    # The damaged parent is reported by check (not a crash), the child itself is intact.
    report = check_image(str(child))
    assert report.exit_code == 4
    assert report.layers[0].problems == [] and report.layers[1].problems


def test_parent_truncated_under_a_mount(tmp_path: Path, mounts) -> None:
    base, child, flat = build_chain(tmp_path)
    cut = block_data_offset(base, 2) + 128 * KIB
    mount = mounts.vhdfs(child, tmp_path / "mnt")
    fd = os.open(mount.mountpoint / "disk.raw", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 5 * BLOCK_SIZE) == flat[5 * BLOCK_SIZE:5 * BLOCK_SIZE + 4096]
        os.truncate(base, cut)
        with pytest.raises(OSError) as failed:
            os.pread(fd, 4096, 5 * BLOCK_SIZE + 4096)
        assert failed.value.errno == errno.EIO
        assert os.pread(fd, 4096, 0) == flat[:4096]
        assert os.pread(fd, 4096, 2 * BLOCK_SIZE + 4096) == flat[2 * BLOCK_SIZE + 4096:2 * BLOCK_SIZE + 8192]
    finally:
        os.close(fd)


def test_top_truncated_under_a_writable_mount(tmp_path: Path, mounts) -> None:
    """The top layer is cut short (its footer and block 2 gone) while mounted --rw: reads of
    what is gone fail with EIO, the rest reads and takes writes, and afterwards the file is
    checkable: check names the missing footer, reading goes on from the footer copy."""
    base, child, flat = build_chain(tmp_path)
    cut = block_data_offset(child, 2) + 2048  # keeps block 0, cuts block 2's data short
    mount = mounts.vhdfs(child, tmp_path / "mnt", "--rw")  # (holds child.vhd alone)
    fd = os.open(mount.mountpoint / "disk.raw", os.O_RDWR)
    try:
        os.truncate(child, cut)
        with pytest.raises(OSError) as failed:
            os.pread(fd, 4096, 2 * BLOCK_SIZE + 4096)
        assert failed.value.errno == errno.EIO
        assert os.pread(fd, 4096, 0) == flat[:4096]
        assert os.pwrite(fd, b"w" * 512, 1024) == 512  # block 0 exists: the write goes in
        os.fsync(fd)
    finally:
        os.close(fd)
    mount.stop()
    report = check_image(str(child))
    assert report.exit_code == 4, report.as_dict()
    codes = {f.code for f in report.layers[0].problems}
    assert codes & {"footer-missing", "footer-damaged"}, report.as_dict()
    with open_chain(str(child)) as chain:
        assert any("footer copy" in w for w in chain.warnings)
        assert chain.read(1024, 512) == b"w" * 512
        assert chain.read(0, 1024) == flat[:1024]


# ------------------------------------------------------------------ ENOSPC
@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs: ENOSPC after a few hundred KiB of new blocks."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill_until_enospc(write, block_size: int, blocks: int) -> tuple[list[tuple[int, bytes]], int, Exception]:
    """Write 128 KiB into successive new blocks until one fails; returns the writes that
    succeeded, the offset that failed and the error."""
    done: list[tuple[int, bytes]] = []
    for index in range(1, blocks):
        offset = index * block_size + 8 * KIB
        data = pattern(offset, 128 * KIB, 9)
        try:
            write(offset, data)
        except (ImageIOError, OSError) as exc:
            return done, offset, exc
        done.append((offset, data))
    raise AssertionError("the small file system never filled up")


def test_enospc_during_block_allocation_through_the_api(tmp_path: Path, small_fs: Path) -> None:
    base = make_dynamic(small_fs / "base.vhd", size=8 * MIB, writes=((0, 16 * KIB),))
    child = make_child(small_fs / "child.vhd", base, writes=((512, 1024),))
    with open_chain(str(child)) as chain:
        before = chain.read(0, chain.size)
    with open_chain(str(child), writable=True) as chain:
        done, failed_at, error = _fill_until_enospc(chain.write, BLOCK_SIZE, 16)
        assert isinstance(error, ImageIOError) and error.errno == errno.ENOSPC, error
        assert "child.vhd" in str(error)
        assert done, "at least one block fitted before the file system was full"
        # That request only: writes into blocks that exist still work, and reads too.
        chain.write(512, b"x" * 512)
        chain.write(done[0][0], b"y" * 4096)
        assert chain.read(512, 512) == b"x" * 512
        chain.flush()
    expected = bytearray(before)
    for offset, data in done:
        expected[offset:offset + len(data)] = data
    expected[512:1024] = b"x" * 512
    expected[done[0][0]:done[0][0] + 4096] = b"y" * 4096
    with open_chain(str(child)) as chain:
        got = chain.read(0, chain.size)
    # The failed request may or may not have landed (a failed write leaves its range
    # undefined); everything else is exact.
    lo, hi = failed_at, failed_at + 128 * KIB
    assert got[:lo] == bytes(expected[:lo]) and got[hi:] == bytes(expected[hi:])
    check_clean(child)
    assert read_footer(child).disk_type == 4


def test_enospc_through_a_writable_mount(tmp_path: Path, small_fs: Path, mounts) -> None:
    base = make_dynamic(small_fs / "base.vhd", size=8 * MIB, writes=((0, 16 * KIB),))
    child = make_child(small_fs / "child.vhd", base, writes=())
    with open_chain(str(child)) as chain:
        before = chain.read(0, chain.size)
    mount = mounts.vhdfs(child, tmp_path / "mnt", "--rw")
    fd = os.open(mount.mountpoint / "disk.raw", os.O_RDWR)
    try:
        def write(offset: int, data: bytes) -> None:
            assert os.pwrite(fd, data, offset) == len(data)

        done, failed_at, error = _fill_until_enospc(write, BLOCK_SIZE, 16)
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC, error
        write(done[0][0], b"z" * 4096)  # an existing block still takes writes
        assert os.pread(fd, 4096, done[0][0]) == b"z" * 4096
        os.fsync(fd)
    finally:
        os.close(fd)
    mount.stop()
    expected = bytearray(before)
    for offset, data in done:
        expected[offset:offset + len(data)] = data
    expected[done[0][0]:done[0][0] + 4096] = b"z" * 4096
    with open_chain(str(child)) as chain:
        got = chain.read(0, chain.size)
    lo, hi = failed_at, failed_at + 128 * KIB
    assert got[:lo] == bytes(expected[:lo]) and got[hi:] == bytes(expected[hi:])
    check_clean(child)

