"""File times through a real mount, as `stat` (and an upload's consistency check) sees them:
on a --rw mount a write through disk.raw or a partition file shows at once in the mtime and
ctime of disk.raw, disk.vhd and every partition file; a read-only mount's times never move."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fuse.test_times_ops import NAMES, disk_with_partitions


def times(mountpoint: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for name in NAMES:
        info = os.stat(mountpoint / name)
        out[name] = (info.st_mtime_ns, info.st_ctime_ns, info.st_size)
    return out


@pytest.mark.parametrize("target", ["disk.raw", "p2"])
def test_writes_show_at_once_in_every_files_times(tmp_path: Path, mount, target: str) -> None:
    mounted = mount(disk_with_partitions(tmp_path), "--rw")
    before = times(mounted.mountpoint)  # the kernel may cache these: it must not
    fd = os.open(mounted.file(target), os.O_WRONLY)
    try:
        for round_ in range(3):
            os.pwrite(fd, bytes([round_ + 1]) * 4096, 8192)
            after = times(mounted.mountpoint)
            for name in NAMES:
                assert after[name][0] > before[name][0], (round_, name, "mtime")
                assert after[name][1] > before[name][1], (round_, name, "ctime")
                assert after[name][2] == before[name][2], (round_, name, "size")
            before = after
    finally:
        os.close(fd)


def test_a_read_only_mount_keeps_its_times(tmp_path: Path, mount) -> None:
    mounted = mount(disk_with_partitions(tmp_path))
    before = times(mounted.mountpoint)
    with open(mounted.file("disk.vhd"), "rb") as handle:
        while handle.read(1 << 20):
            pass
    time.sleep(0.05)
    assert times(mounted.mountpoint) == before
    assert len({mtime for mtime, ctime, _ in before.values() if mtime == ctime}) == 1
