"""Real FUSE mounts: chains to mount, a mount helper that always unmounts, vhdimount."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tooling import force_unmount
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

KiB = 1024
MiB = 1024 * KiB
SECTOR = 512
TIMEOUT = 30.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _need_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")


def vhdfs(*args: str | os.PathLike[str], check: bool = True,
          timeout: float = 120.0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"vhdfs {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")
    return done


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- chains
def fill_layer(path: Path, rng: random.Random, *, whole_blocks: float = 0.0,
               sector_runs: int = 0) -> None:
    """Write random data: a fraction of whole blocks, then `sector_runs` runs of 1-40 sectors
    at any sector (so bitmap bytes end up partly set, as Windows leaves them)."""
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        blocks = layer.size // layer.block_size
        for index in rng.sample(range(blocks), int(blocks * whole_blocks)):
            layer.write(index * layer.block_size, rng.randbytes(layer.block_size))
        sectors = layer.size // SECTOR
        for _ in range(sector_runs):
            count = rng.randint(1, 40)
            first = rng.randrange(sectors - count)
            layer.write(first * SECTOR, rng.randbytes(count * SECTOR))


def add_child(parent: Path, child: Path) -> Path:
    with Layer(LocalFile(parent)) as layer:
        create_differencing(child, parent_info_of(parent, layer))
    return child


def make_chain(folder: Path, depth: int, *, size: int = 8 * MiB, block_size: int = 256 * KiB,
               seed: int = 7) -> list[Path]:
    """A chain of `depth` layers with random data in every layer; paths base first."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.vhd"
    create_dynamic(base, size, block_size)
    fill_layer(base, rng, whole_blocks=0.6)
    paths = [base]
    for level in range(1, depth):
        child = add_child(paths[-1], folder / f"child{level}.vhd")
        fill_layer(child, rng, whole_blocks=0.1, sector_runs=60)
        paths.append(child)
    return paths


def flat_reference(image: Path, out: Path) -> bytes:
    vhdfs("convert", image, out, "--to", "raw", "--force")
    return out.read_bytes()


# ---------------------------------------------------------------------------- mounts
class Mount:
    """`vhdfs mount IMAGE DIR --foreground ...` in a subprocess."""

    def __init__(self, image: Path, mountpoint: Path, *args: str,
                 command: tuple[str, ...] = ("-m", "vhdfs", "mount")) -> None:
        self.image, self.mountpoint, self.args, self.command = image, mountpoint, args, command
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.out_path = mountpoint.parent / f".{mountpoint.name}.out"
        self.err_path = mountpoint.parent / f".{mountpoint.name}.err"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mount:
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *self.command, str(self.image), str(self.mountpoint),
                 *self.args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=PROJECT_ROOT)
        deadline = time.monotonic() + TIMEOUT
        while "mounted" not in self.out_path.read_text():
            if self.proc.poll() is not None:
                raise AssertionError(f"vhdfs mount exited {self.proc.returncode}: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vhdfs mount did not become ready: {self.stderr}")
            time.sleep(0.05)
        assert os.path.ismount(self.mountpoint)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def file(self, name: str = "disk.raw") -> Path:
        return self.mountpoint / name

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the daemon, wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(TIMEOUT)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        force_unmount(self.mountpoint)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator:
    """mount(image, *args) starts a foreground mount at a new folder; all are unmounted after."""
    started: list[Mount] = []

    def start(image: Path, *args: str, at: Path | None = None, threads: bool = False) -> Mount:
        """`threads`: serve as if the chain were remote (reads and writes in worker threads)."""
        point = at or tmp_path / f"mnt{len(started)}"
        if threads:
            handle = Mount(image, point, *args, command=("-m", "tests.fuse.serve_as_remote"))
        else:
            handle = Mount(image, point, "--foreground", *args)
        started.append(handle)
        return handle.start()

    yield start
    for handle in reversed(started):
        handle.cleanup()


