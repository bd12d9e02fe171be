"""Helpers for cross-checks against qemu-img and libvhdi."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
    return path


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def vhdimount(image: Path, mountpoint: Path):
    """libvhdi's view of a chain: yields the file of the top layer (vhdiN, N = depth)."""
    need("vhdimount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: libvhdi's vhdimount cannot run")
    mountpoint.mkdir(exist_ok=True)
    subprocess.run(["vhdimount", str(image), str(mountpoint)], check=True, capture_output=True)
    try:
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
