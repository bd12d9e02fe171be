"""Fixtures for the VHDX tests: sample images, qemu-img and libvhdi helpers, the writer."""

from __future__ import annotations

import bz2
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # vhdxwriter sits next to the tests
    sys.path.insert(0, str(HERE))

# The shared samples live beside the repository; VHDFS_SAMPLES may point elsewhere.
SAMPLES = Path(os.environ.get("VHDFS_SAMPLES", HERE.parents[1] / ".." / "shared" / "samples"))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path


def run(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory):
    """Decompress one sample into a session folder (once) and return its path."""
    folder = tmp_path_factory.mktemp("vhdx-samples")

    def get(name: str) -> Path:
        packed = SAMPLES / f"{name}.bz2"
        if not packed.exists():
            pytest.fail(f"sample {packed} is missing (set VHDFS_SAMPLES to the samples folder)")
        out = folder / name
        if not out.exists():
            with bz2.open(packed) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return out

    return get


def qemu_compare(image: Path, raw: Path) -> subprocess.CompletedProcess:
    """qemu-img's verdict on whether `image` (as qemu reads it) equals the raw file."""
    need("qemu-img")
    return subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", str(image), str(raw)],
                          capture_output=True, text=True)


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
