"""Helpers for the VHDX tests: qemu-img and libvhdi cross-checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.tooling import need, run


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


