"""Helpers for the VHDX tests: qemu-img and libvhdi cross-checks, the samples folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# The shared samples live beside the repository; VHDFS_SAMPLES may point elsewhere.
SAMPLES = Path(os.environ.get("VHDFS_SAMPLES", HERE.parents[1] / ".." / "shared" / "samples"))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path


def run(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def qemu_compare(image: Path, raw: Path) -> subprocess.CompletedProcess:
    """qemu-img's verdict on whether `image` (as qemu reads it) equals the raw file."""
    need("qemu-img")
    return subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", str(image), str(raw)],
                          capture_output=True, text=True)


def qemu_raw(image: Path, out: Path, fmt: str = "vhdx") -> Path:
    """qemu-img's reading of `image` as a sparse raw file."""
    need("qemu-img")
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", image, out)
    return out


def differences_from_raw(chain, raw: Path) -> list[int]:
    """Offsets (4 MiB pieces) where the chain and a sparse raw file disagree.

    Only data is compared: the raw file's data ranges (SEEK_DATA) and the chain's non-zero
    extents; elsewhere both are zeros. Cheap for large sparse disks.
    """
    from vhdfs.sources.local import LocalFile

    piece = 4 << 20
    bad: list[int] = []
    with LocalFile(raw) as ref:
        if ref.size() != chain.size:
            return [-1]
        spans = ref.data_ranges(0, chain.size)
        spans += [(e.offset, e.offset + e.length) for e in chain.iter_extents() if not e.is_zero]
        for lo, hi in spans:
            for pos in range(lo, hi, piece):
                n = min(piece, hi - pos)
                if chain.read(pos, n) != ref.read_at(pos, n):
                    bad.append(pos)
    return bad


@contextlib.contextmanager
def vhdimount(image: Path, mountpoint: Path):
    """libvhdi's view of a chain: yields the file of the top layer (vhdiN, N = depth)."""
    need("vhdimount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: libvhdi's vhdimount cannot run")
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(["vhdimount", str(image), str(mountpoint)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"vhdimount failed: {done.stderr.strip()}")
    try:
        files: list[Path] = []
        for _ in range(100):
            files = sorted(mountpoint.glob("vhdi*"), key=lambda p: int(p.name[4:]))
            if files:
                break
            time.sleep(0.05)
        yield files[-1]
    finally:
        for args in (["fusermount3", "-u"], ["fusermount3", "-u", "-z"]):
            if subprocess.run([*args, str(mountpoint)], capture_output=True).returncode == 0:
                break
