"""`vhdfs mount --rw` of a VHDX checkpoint (.avhdx): writes through a real FUSE mount land in the
top file only, read back as written, and the file is closed clean (log empty) on unmount."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tooling import force_unmount, vhdimount
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.resolve import open_chain

MiB = 1 << 20
SIZE = 24 * MiB


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")


def vhdfs(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def chain_of(folder: Path, lss: int) -> tuple[Path, Path, bytearray]:
    """base.vhdx with data, child.avhdx over it; the model of what the child reads."""
    rng = random.Random(lss)
    base = folder / "base.vhdx"
    create_vhdx(base, SIZE, block_size=MiB, logical_sector_size=lss)
    model = bytearray(SIZE)
    with open_chain(str(base), writable=True) as chain:
        for offset, length in ((0, 3 * MiB), (9 * MiB + 4096, 300_000)):
            data = rng.randbytes(length)
            chain.write(offset, data)
            model[offset:offset + length] = data
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(folder / "child.avhdx", base, chain.top, block_size=MiB)
    return base, folder / "child.avhdx", model


def write_through(disk: Path, model: bytearray, seed: int, count: int = 40) -> None:
    rng = random.Random(seed)
    fd = os.open(disk, os.O_RDWR)
    try:
        for number in range(count):
            length = rng.choice([1, 512, 700, 4096, 65536, 200_000])
            offset = rng.randrange(0, SIZE - length)
            data = rng.randbytes(length)
            assert os.pwrite(fd, data, offset) == length
            model[offset:offset + length] = data
            if number % 10 == 9:
                os.fsync(fd)
        os.fsync(fd)
        assert os.pread(fd, SIZE, 0) == bytes(model)  # what the mount shows
    finally:
        os.close(fd)


def closed_clean(image: Path, model: bytearray) -> None:
    with open_chain(str(image)) as chain:
        assert chain.warnings == [], chain.warnings
        assert chain.top.describe()["log"] == "clean"
        assert chain.read(0, SIZE) == bytes(model)


@pytest.mark.parametrize("lss", [512, 4096])
def test_a_checkpoint_mounted_rw_takes_writes_and_closes_clean(tmp_path, lss):
    base, child, model = chain_of(tmp_path, lss)
    base_before = base.read_bytes()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        done = vhdfs("mount", child, mountpoint, "--rw")
        assert done.returncode == 0, done.stderr
        write_through(mountpoint / "disk.raw", model, seed=lss)
        done = vhdfs("umount", mountpoint)
        assert done.returncode == 0, done.stderr
    finally:
        force_unmount(mountpoint)
    assert base.read_bytes() == base_before  # the parent is never written
    closed_clean(child, model)
    with vhdimount(child, tmp_path / "libvhdi") as flat:  # another reader agrees
        assert flat.read_bytes() == bytes(model)


def test_a_foreground_rw_mount_stopped_by_a_signal_closes_clean(tmp_path):
    _, child, model = chain_of(tmp_path, 512)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    out = open(tmp_path / "mount.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "vhdfs", "mount", str(child), str(mountpoint),
                             "--rw", "--foreground"], stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        write_through(mountpoint / "disk.raw", model, seed=3, count=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        force_unmount(mountpoint)
        out.close()
    closed_clean(child, model)


def test_mounting_a_parent_rw_warns_of_its_checkpoints(tmp_path):
    base, child, _ = chain_of(tmp_path, 512)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        done = vhdfs("mount", base, mountpoint, "--rw")
        assert done.returncode == 0, done.stderr
        assert "has children" in done.stderr and "child.avhdx" in done.stderr
    finally:
        vhdfs("umount", mountpoint)
        force_unmount(mountpoint)
