"""External tools the tests cross-check against: presence, running, libvhdi's view, unmounting."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MOUNT_TIMEOUT = 10.0


#: The tier markers of the test running now (tests/conftest.py sets it): `need` keeps
#: programs out of the unit tier, whose promise is "nothing but the venv and a few tools".
RUNNING_TIERS: set[str] = set()
NOT_IN_UNIT = {"qemu-img", "vhdimount", "ntfs-3g", "fusermount3"}


def need(tool: str) -> str:
    if tool in NOT_IN_UNIT and "unit" in RUNNING_TIERS:
        pytest.fail(f"a unit-tier test runs {tool}: mark it @pytest.mark.interop (or move it to "
                    "the tier of tests/conftest.py's TIERS that runs it)")
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path


def run(*args: str | os.PathLike[str]) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True,
                          text=True).stdout


def _mounted(path: Path) -> bool:
    """From the mount table: os.path.ismount says False for a mount whose daemon died
    (stat fails with ENOTCONN), which must still be unmounted."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as table:
        return any(line.split()[1].replace("\\040", " ") == target for line in table)


def force_unmount(path: Path) -> None:
    """Unmount whatever FUSE file system is at `path`, lazily as a last resort."""
    for args in (["fusermount3", "-u"], ["fusermount3", "-u", "-z"], ["umount", "-l"]):
        if not _mounted(path):
            return
        subprocess.run([*args, str(path)], capture_output=True)


@contextlib.contextmanager
def vhdimount(image: Path, mountpoint: Path) -> Iterator[Path]:
    """libvhdi's view of a chain: yields the file of the top layer (vhdiN, N = depth)."""
    need("vhdimount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: libvhdi's vhdimount cannot run")
    mountpoint.mkdir(exist_ok=True)
    done = subprocess.run(["vhdimount", str(image), str(mountpoint)], capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"vhdimount failed: {done.stderr.strip()}")
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        files: list[Path] = []
        while not files and time.monotonic() < deadline:
            files = sorted(mountpoint.glob("vhdi*"), key=lambda p: int(p.name[4:]))
            if not files:
                time.sleep(0.05)
        assert files, "vhdimount showed no files"
        yield files[-1]
    finally:
        force_unmount(mountpoint)
