"""Damaged data under a mount: EIO for that range, logged once, everything else still served."""

from __future__ import annotations

import errno
import os
import random
import struct

import pytest

from tests.fuse.conftest import KiB, MiB, add_child, flat_reference, vhdfs
from tests.tooling import force_unmount
from vhdfs.create import create_dynamic
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

BLOCK = 256 * KiB
BAD_INDEX = 5


def _chain(folder):
    """Base with data everywhere; child holding block 5 whole and a few sectors of block 2."""
    folder.mkdir()
    rng = random.Random(1)
    base = folder / "base.vhd"
    create_dynamic(base, 4 * MiB, BLOCK)
    with Layer(LocalFile(base, writable=True), writable=True) as layer:
        layer.write(0, rng.randbytes(4 * MiB))
    child = add_child(base, folder / "child.vhd")
    with Layer(LocalFile(child, writable=True), writable=True) as layer:
        layer.write(2 * BLOCK + 4096, rng.randbytes(8192))
        layer.write(BAD_INDEX * BLOCK, rng.randbytes(BLOCK))
    with Layer(LocalFile(child)) as layer:
        entry = layer.bat[BAD_INDEX]
        data_at = entry * 512 + layer.bitmap_size
        bat_offset = layer.header.table_offset
    return child, data_at, bat_offset


def _pread(path, length, offset):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _check_serving(path, flat, bad_start, bad_end):
    """Every range outside [bad_start, bad_end) reads right; inside gives EIO, every time."""
    for _ in range(3):
        with pytest.raises(OSError) as caught:
            _pread(path, 4096, bad_end - 4096)
        assert caught.value.errno == errno.EIO
    assert _pread(path, bad_start, 0) == flat[:bad_start]
    assert _pread(path, len(flat) - bad_end, bad_end) == flat[bad_end:]


def test_block_cut_off_under_a_running_mount_gives_eio_there_only(tmp_path, mount):
    child, data_at, _ = _chain(tmp_path / "chain")
    flat = flat_reference(child, tmp_path / "flat.raw")
    mounted = mount(child)
    assert mounted.file().read_bytes() == flat  # bitmaps and extents now cached
    os.truncate(child, data_at + 4096)  # the block's data now ends after its first 4 KiB
    bad_start, bad_end = BAD_INDEX * BLOCK + 4096, (BAD_INDEX + 1) * BLOCK
    assert _pread(mounted.file(), 4096, BAD_INDEX * BLOCK) == flat[BAD_INDEX * BLOCK:bad_start]
    _check_serving(mounted.file(), flat, bad_start, bad_end)
    _check_serving(mounted.file("disk.vhd"), flat, bad_start, bad_end)
    assert mounted.stop() == 0
    failures = [line for line in mounted.stderr.splitlines() if "returning EIO" in line]
    assert len(failures) == 1, mounted.stderr  # logged once, however often it was read
    assert f"offset {bad_end - 4096}" in failures[0] and "truncated" in failures[0]


def test_damaged_bat_entry_gives_eio_for_that_block_and_is_logged(tmp_path):
    child, _, bat_offset = _chain(tmp_path / "chain")
    flat = flat_reference(child, tmp_path / "flat.raw")  # taken before the damage
    with open(child, "r+b") as handle:  # block 5 now points far past the end of the file
        handle.seek(bat_offset + 4 * BAD_INDEX)
        handle.write(struct.pack(">I", 0x00F00000))
    point, log = tmp_path / "mnt", tmp_path / "mount.log"
    point.mkdir()
    done = vhdfs("mount", child, point, "--log", log)
    try:
        assert "runs past the data area" in done.stderr  # warned at open, mounted anyway
        bad_start, bad_end = BAD_INDEX * BLOCK, (BAD_INDEX + 1) * BLOCK
        _check_serving(point / "disk.raw", flat, bad_start, bad_end)
    finally:
        vhdfs("umount", point, check=False)
        force_unmount(point)
    text = log.read_text()
    assert text.count("returning EIO") == 1, text
    assert "BAT entry 5" in text
