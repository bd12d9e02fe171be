"""Pieces the benchmarks share: the benchmark chain, medians, peak memory of a process, an
Azurite with a work folder for the benchmarks of blob storage.

`build_chain` writes the chain every benchmark reads: a dynamic base and differencing
children, each with a given fraction of its blocks allocated. Children write partial blocks
(runs of 4 KiB clusters, as a guest file system does), so reads cross sector bitmaps.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.azurite import Azurite, azurite_binary
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CLUSTER = 4 * KiB


def build_chain(folder: Path, size: int = 2 * GiB, block_size: int = 2 * MiB,
                fractions: Sequence[float] = (0.5, 0.3, 0.1), seed: int = 1) -> list[Path]:
    """Write base.vhd, layer1.vhd, ... into `folder`; return their paths, base first.

    `fractions[i]` of the blocks of layer i are allocated; the base fills its blocks, each
    child fills about half of each block it allocates, in runs of 1 to 64 clusters.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    blocks = size // block_size
    for depth, fraction in enumerate(fractions):
        path = folder / ("base.vhd" if depth == 0 else f"layer{depth}.vhd")
        if depth == 0:
            create_dynamic(path, size, block_size, force=True)
        else:
            with Layer(LocalFile(paths[-1])) as parent:
                create_differencing(path, parent_info_of(paths[-1], parent), block_size, force=True)
        chosen = sorted(rng.sample(range(blocks), int(blocks * fraction)))
        with Layer(LocalFile(path, writable=True), writable=True) as layer:
            for index in chosen:
                start = index * block_size
                if depth == 0:
                    layer.write(start, rng.randbytes(block_size))
                    continue
                pos = 0
                while pos < block_size:
                    run = min(rng.randint(1, 64) * CLUSTER, block_size - pos)
                    if rng.random() < 0.5:
                        layer.write(start + pos, rng.randbytes(run))
                    pos += run
        paths.append(path)
    return paths


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_bytes(pid: int) -> int:
    """Peak resident memory (VmHWM) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KiB
    raise RuntimeError(f"no VmHWM for process {pid}")


def wait_for_mount(path: Path, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount process for {path} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not become a mount within {timeout} s")
        time.sleep(0.05)


def unmount(path: Path) -> None:
    """fusermount3 -u, lazily as a last resort; quiet when nothing is mounted."""
    if not os.path.ismount(path):
        return
    if subprocess.run(["fusermount3", "-u", str(path)], capture_output=True).returncode:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


@contextlib.contextmanager
def azurite_work(folder: Path | None, prefix: str) -> Iterator[tuple[Azurite, Path]]:
    """An Azurite on 127.0.0.1 for one benchmark run and its work folder: `folder` (--folder,
    kept), or a new temporary one named `prefix`..., removed afterwards."""
    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed: run scripts/setup")
    work = folder or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with Azurite(binary, work / "azurite") as server:
            yield server, work
    finally:
        if folder is None:
            shutil.rmtree(work, ignore_errors=True)
