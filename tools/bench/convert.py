"""Benchmark: flatten a 3-layer chain to raw, against qemu-img and cp, in the same run.

    python -m tools.bench.convert [--folder DIR] [--size 4G] [--runs 3]

The chain: 4 GiB virtual, 2 MiB blocks, about 40% / 20% / 5% of blocks allocated (base,
middle, top; children fill about half of each block they allocate, in 4 KiB-cluster runs).
Measured, page cache warm, median of --runs:
  - `vhdfs convert top.vhd out.raw --to raw`
  - `qemu-img convert -O raw` of the same disk as one dynamic VHD (qemu cannot read chains
    of VHDs: it ignores the parent of a differencing disk)
  - `cp --sparse=always` of the flat raw image
Peak memory (max RSS) of each command comes from wait4().
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.common import GiB, MiB, build_chain, median
from vhdfs.convert import convert
from vhdfs.resolve import open_chain
from vhdfs.units import parse_size


def timed(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed")
    return elapsed, usage.ru_maxrss * 1024


def measure(label: str, args: list[str], out: Path, runs: int) -> dict:
    times, peaks = [], []
    for _ in range(runs + 1):  # the first run warms the page cache and is not counted
        out.unlink(missing_ok=True)
        seconds, peak = timed(args)
        times.append(seconds)
        peaks.append(peak)
    out.unlink(missing_ok=True)
    result = {"label": label, "seconds": median(times[1:]), "peak_rss": max(peaks)}
    print(f"{label:<34} {result['seconds']:7.2f} s   peak RSS {result['peak_rss'] / MiB:6.1f} MiB",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("bench-work/convert"))
    parser.add_argument("--size", default="4G")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    folder = args.folder
    if shutil.which("qemu-img") is None:
        sys.exit("qemu-img is missing (scripts/setup installs qemu-utils)")
    chain_paths = build_chain(folder / "chain", size, 2 * MiB, (0.4, 0.2, 0.05), seed=11)
    top = chain_paths[-1]
    single = folder / "single.vhd"
    flat = folder / "flat.raw"
    with open_chain(str(top)) as chain:
        if not single.exists():
            convert(chain, single, "dynamic")
        if not flat.exists():
            convert(chain, flat, "raw")
    data = sum(p.stat().st_blocks * 512 for p in chain_paths)
    print(f"chain: {len(chain_paths)} layers, {size / GiB:.0f} GiB virtual, "
          f"{data / MiB:.0f} MiB stored; flat raw holds "
          f"{flat.stat().st_blocks * 512 / MiB:.0f} MiB of data")
    out = folder / "out.raw"
    vhdfs = [sys.executable, "-m", "vhdfs", "-q", "convert", str(top), str(out), "--to", "raw"]
    qemu = ["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(single), str(out)]
    cp = ["cp", "--sparse=always", str(flat), str(out)]
    ours = measure("vhdfs convert --to raw (3 layers)", vhdfs, out, args.runs)
    theirs = measure("qemu-img convert -O raw (1 layer)", qemu, out, args.runs)
    copy = measure("cp --sparse=always (flat raw)", cp, out, args.runs)
    print(f"ratio vhdfs/qemu-img time: {ours['seconds'] / theirs['seconds']:.2f} "
          f"(target <= 1.00); vhdfs/cp: {ours['seconds'] / copy['seconds']:.2f}; "
          f"vhdfs peak RSS {ours['peak_rss'] / MiB:.0f} MiB (target < 200 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
