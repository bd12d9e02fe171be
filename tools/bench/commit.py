"""Benchmark: commit a child holding 512 MiB of data into a 4 GiB parent, against `cp` of
the child file, in the same run.

    python -m tools.bench.commit [--folder DIR] [--size 4G] [--data 512M] [--runs 3] [--vhdx]

The chain: a dynamic parent of --size (2 MiB blocks, a quarter of them full) and a
differencing child whose allocated blocks are about half filled, in runs of 4 KiB clusters,
until it holds --data bytes. Page cache warm (one run first, not counted), median of --runs:
  - `vhdfs commit child.vhd` into a fresh copy of the parent each run (the copy is not timed);
    commit syncs the parent before it returns (data, then bitmaps, then BAT);
  - `cp child.vhd copy.vhd` (coreutils, sparse files kept sparse), as the anchor;
  - `cp` then `sync copy.vhd`, the same copy made durable, for an even comparison;
  - `vhdfs --version`: starting Python and the command line, part of the commit's time;
  - with --vhdx, `vhdfs commit child.avhdx` of the same chain as VHDX (a dynamic .vhdx
    parent and an .avhdx child, 2 MiB blocks, the same writes), for the ratio to the VHD
    commit.
Peak memory (max RSS) of each command comes from wait4().
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vhdfs.create import (
    create_differencing,
    create_dynamic,
    create_vhdx,
    create_vhdx_differencing,
    parent_info_of,
)
from vhdfs.image import RunKind
from vhdfs.sources.local import LocalFile
from vhdfs.units import parse_size
from vhdfs.vhd.layer import UNALLOCATED, Layer
from vhdfs.vhdx.layer import VhdxLayer

MiB = 1 << 20
CLUSTER = 4096
BLOCK = 2 * MiB  # of the parent and the child, VHD and VHDX alike


def _write_parent(layer: Layer | VhdxLayer, rng: random.Random, blocks: int) -> None:
    """A quarter of the parent's blocks, whole."""
    for index in sorted(rng.sample(range(blocks), blocks // 4)):
        layer.write(index * BLOCK, rng.randbytes(BLOCK))


def _write_child(layer: Layer | VhdxLayer, rng: random.Random, blocks: int, data: int) -> None:
    """About `data` bytes into the child, in runs of 1 to 64 clusters over random blocks."""
    written = 0
    for index in rng.sample(range(blocks), blocks):
        if written >= data:
            break
        pos = 0
        while pos < BLOCK and written < data:
            left = -(-(data - written) // CLUSTER) * CLUSTER
            run = min(rng.randint(1, 64) * CLUSTER, BLOCK - pos, left)
            if rng.random() < 0.5:
                layer.write(index * BLOCK + pos, rng.randbytes(run))
                written += run
            pos += run


def build(folder: Path, size: int, data: int, seed: int = 5) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    parent, child = folder / "parent.vhd", folder / "child.vhd"
    if parent.exists() and child.exists():
        return parent, child
    rng = random.Random(seed)
    blocks = size // BLOCK
    create_dynamic(parent, size, BLOCK, force=True)
    with Layer(LocalFile(parent, writable=True), writable=True) as layer:
        _write_parent(layer, rng, blocks)
    with Layer(LocalFile(parent)) as layer:
        create_differencing(child, parent_info_of(parent, layer), BLOCK, force=True)
    with Layer(LocalFile(child, writable=True), writable=True) as layer:
        _write_child(layer, rng, blocks, data)
    return parent, child


def build_vhdx(folder: Path, size: int, data: int, seed: int = 5) -> tuple[Path, Path]:
    """The chain of `build` as VHDX: the same blocks written with the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    parent, child = folder / "parent.vhdx", folder / "child.avhdx"
    if parent.exists() and child.exists():
        return parent, child
    rng = random.Random(seed)
    blocks = size // BLOCK
    create_vhdx(parent, size, block_size=BLOCK, force=True)
    with VhdxLayer(LocalFile(parent, writable=True), writable=True) as layer:
        _write_parent(layer, rng, blocks)
    with LocalFile(parent) as source, VhdxLayer(source) as layer:
        create_vhdx_differencing(child, parent, layer, block_size=BLOCK, force=True)
    with VhdxLayer(LocalFile(child, writable=True), writable=True) as layer:
        _write_child(layer, rng, blocks, data)
    return parent, child


def child_data(child: Path) -> int:
    with Layer(LocalFile(child)) as layer:
        return sum(r.length for i in range(layer.block_count) if layer.bat[i] != UNALLOCATED
                   for r in layer.block_runs(i) if r.kind is RunKind.HERE)


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed")
    return elapsed, usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("bench-work/commit"))
    parser.add_argument("--size", default="4G")
    parser.add_argument("--data", default="512M")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vhdx", action="store_true",
                        help="also commit the same chain as VHDX (.avhdx into .vhdx)")
    args = parser.parse_args(argv)
    parent, child = build(args.folder / "chain", parse_size(args.size), parse_size(args.data))
    work = args.folder / "work"
    work.mkdir(exist_ok=True)
    print(f"child {child.stat().st_size / MiB:.0f} MiB file, {child_data(child) / MiB:.0f} MiB of "
          f"data; parent {parse_size(args.size) >> 30} GiB virtual, "
          f"{parent.stat().st_blocks * 512 / MiB:.0f} MiB "
          "stored", flush=True)
    results: dict[str, list[float]] = {"commit": [], "cp": [], "cp+sync": [], "startup": []}
    vhdx_chain = None
    if args.vhdx:
        vhdx_chain = build_vhdx(args.folder / "chain-vhdx", parse_size(args.size),
                                parse_size(args.data))
        results["commit-vhdx"] = []
    peaks: dict[str, int] = {key: 0 for key in results}
    copy = work / "copy.vhd"
    for round_ in range(args.runs + 1):
        # Interleaved rounds: each measurement sees the same machine load.
        target = work / "parent.vhd"
        shutil.copyfile(parent, target)
        work_child = work / "child.vhd"
        shutil.copyfile(child, work_child)
        subprocess.run(["sync"], check=True)
        seconds, peak = timed([sys.executable, "-m", "vhdfs", "-q", "commit", str(work_child),
                               "--parent", str(target)])
        if round_:
            results["commit"].append(seconds)
        peaks["commit"] = max(peaks["commit"], peak)
        if vhdx_chain is not None:
            target, work_child = work / "parent.vhdx", work / "child.avhdx"
            for source, copy_to in zip(vhdx_chain, (target, work_child), strict=True):
                shutil.copyfile(source, copy_to)
            subprocess.run(["sync"], check=True)
            seconds, peak = timed([sys.executable, "-m", "vhdfs", "-q", "commit",
                                   str(work_child), "--parent", str(target)])
            if round_:
                results["commit-vhdx"].append(seconds)
            peaks["commit-vhdx"] = max(peaks["commit-vhdx"], peak)
        seconds, peak = timed([sys.executable, "-m", "vhdfs", "--version"])
        if round_:
            results["startup"].append(seconds)
        peaks["startup"] = max(peaks["startup"], peak)
        for label, extra in (("cp", []), ("cp+sync", [["sync", str(copy)]])):
            copy.unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            seconds, peak = timed(["cp", str(child), str(copy)])
            for command in extra:
                more, _ = timed(command)
                seconds += more
            if round_:
                results[label].append(seconds)
            peaks[label] = max(peaks[label], peak)
    _report(results, peaks)
    return 0


def _report(results: dict[str, list[float]], peaks: dict[str, int]) -> None:
    """Each measurement's median and peak RSS, and the ratios the benchmark is for."""
    medians = {key: statistics.median(values) for key, values in results.items()}
    for key, value in medians.items():
        print(f"{key:<8} {value:7.2f} s   peak RSS {peaks[key] / MiB:6.1f} MiB   "
              f"runs {' '.join(f'{v:.2f}' for v in results[key])}")
    print(f"commit / cp        = {medians['commit'] / medians['cp']:.2f}")
    if "commit-vhdx" in medians:
        print(f"commit-vhdx / commit (same data, VHDX against VHD) = "
              f"{medians['commit-vhdx'] / medians['commit']:.2f}")
    print(f"commit / cp+sync   = {medians['commit'] / medians['cp+sync']:.2f}")
    work_only = medians["commit"] - medians["startup"]
    print(f"(commit - startup) / cp = {work_only / medians['cp']:.2f}, / cp+sync = "
          f"{work_only / medians['cp+sync']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
