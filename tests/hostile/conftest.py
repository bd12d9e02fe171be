"""Fixtures of the hostile-input suite: a hang guard and a record of every file opened."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tooling import force_unmount
from tools.soak import deadline

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
MOUNT_TIMEOUT = 30.0

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # `open` is raised by open() and os.open() alike: proof that a path was never opened.
    if event == "open" and _opened is not None and args and isinstance(args[0], (str, bytes)):
        _opened.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


sys.addaudithook(_audit)


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Collect the path of every file opened inside the block."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


@pytest.fixture
def opens_recorder():
    """`with opens_recorder() as opened:` lists every path opened inside the block."""
    return recording_opens


@pytest.fixture
def time_limit():
    """`with time_limit(seconds):` raises Hang when the block does not return in time."""
    return deadline


# ------------------------------------------------------------------ real mounts
class Background:
    """A FUSE process (errorfs or `vhdfs mount --foreground`) that is always unmounted."""

    def __init__(self, argv: list[str], mountpoint: Path, ready_word: str) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.log = mountpoint.parent / f".{mountpoint.name}.log"
        self.err = mountpoint.parent / f".{mountpoint.name}.err"
        with open(self.log, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=PROJECT_ROOT)
        limit = time.monotonic() + MOUNT_TIMEOUT
        while ready_word not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > limit:
                self.stop()
                raise AssertionError(f"{argv[:4]} did not mount: {self.err.read_text()}")
            time.sleep(0.05)
        while not os.path.ismount(mountpoint):
            if time.monotonic() > limit:
                self.stop()
                raise AssertionError(f"{mountpoint} is not a mount point")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        force_unmount(self.mountpoint)
        try:
            self.proc.wait(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            force_unmount(self.mountpoint)


@pytest.fixture
def fuse_processes() -> Iterator[list[Background]]:
    """Start FUSE processes with `fuse_processes.append(Background(...))`; all are unmounted,
    last first, when the test ends."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    started: list[Background] = []
    yield started
    for proc in reversed(started):
        proc.stop()


def errorfs(backing: Path, mountpoint: Path, eio: list[tuple[str, int, int]],
            log: Path | None = None) -> Background:
    argv = [sys.executable, str(HERE / "errorfs.py"), str(backing), str(mountpoint)]
    for name, start, length in eio:
        argv += ["--eio", f"{name}:{start}:{length}"]
    if log is not None:
        argv += ["--log", str(log)]
    return Background(argv, mountpoint, "ready")


def vhdfs_mount(image: Path, mountpoint: Path, *args: str) -> Background:
    argv = [sys.executable, "-m", "vhdfs", "mount", str(image), str(mountpoint), "--foreground",
            *args]
    return Background(argv, mountpoint, "mounted")


@pytest.fixture
def mounts(fuse_processes):
    """Helpers: `mounts.errorfs(backing, mp, eio)`, `mounts.vhdfs(image, mp, *args)`."""
    class _Mounts:
        @staticmethod
        def errorfs(backing: Path, mountpoint: Path, eio: list[tuple[str, int, int]],
                    log: Path | None = None) -> Background:
            fuse_processes.append(errorfs(backing, mountpoint, eio, log))
            return fuse_processes[-1]

        @staticmethod
        def vhdfs(image: Path, mountpoint: Path, *args: str) -> Background:
            fuse_processes.append(vhdfs_mount(image, mountpoint, *args))
            return fuse_processes[-1]

    return _Mounts()
