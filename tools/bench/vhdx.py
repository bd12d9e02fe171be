"""Benchmark: writing VHDX, against qemu-img and against vhdfs's own VHD writer.

    python -m tools.bench.vhdx [--folder DIR] [--size 2G] [--runs 3] [--seconds 10]

1. Convert to VHDX (page cache warm, median of --runs, rounds interleaved; peak RSS from
   /usr/bin/time), the 3-layer benchmark chain of tools.bench.convert and the same disk
   as one dynamic VHD:
     vhdfs convert TOP out.vhdx --to vhdx [--fixed]       (durable: synced, then renamed)
     qemu-img convert -O vhdx [-o subformat=fixed] ONE     (as it runs, and + sync)
2. Random 4 KiB writes (O_DIRECT, one writer, --seconds each, then fsync) through
   `vhdfs mount --rw` into a fresh child: an .avhdx over a VHDX base against a .vhd
   child over a VHD base of the same data (2 MiB blocks both). Rounds interleave.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.common import GiB, MiB, build_chain, median, unmount, wait_for_mount
from tools.bench.convert import measure_all
from vhdfs.convert import convert
from vhdfs.create import create_differencing, create_vhdx_differencing, parent_info_of
from vhdfs.resolve import open_chain
from vhdfs.units import parse_size

BLOCK = 4096


def random_writes(path: Path, seconds: float, seed: int) -> tuple[float, float]:
    """(writes per second, seconds of the final fsync) of 4 KiB O_DIRECT writes."""
    rng = random.Random(seed)
    size = path.stat().st_size
    buf = mmap.mmap(-1, BLOCK)
    buf.write(rng.randbytes(BLOCK))
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    count = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(32):
                os.pwritev(fd, [buf], rng.randrange(size // BLOCK) * BLOCK)
            count += 32
        elapsed = time.perf_counter() - start
        before = time.perf_counter()
        os.fsync(fd)
        return count / elapsed, time.perf_counter() - before
    finally:
        os.close(fd)


def mounted_writes(image: Path, point: Path, seconds: float, seed: int) -> tuple[float, float]:
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "vhdfs", "mount", str(image), str(point),
                             "--rw", "--foreground"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_mount(point, proc)
        return random_writes(point / "disk.raw", seconds, seed)
    finally:
        unmount(point)
        proc.wait(60)


def convert_part(folder: Path, size: int, runs: int) -> None:
    chain_paths = build_chain(folder / "chain", size, 2 * MiB, (0.4, 0.2, 0.05), seed=11)
    top = chain_paths[-1]
    single = folder / "single.vhd"
    with open_chain(str(top)) as chain:
        if not single.exists():
            convert(chain, single, "dynamic")
    out = folder / "out.vhdx"
    vhdfs = [sys.executable, "-m", "vhdfs", "-q", "convert"]
    qemu = ["qemu-img", "convert", "-f", "vpc", "-O", "vhdx", str(single), str(out)]
    qemu_fixed = ["qemu-img", "convert", "-f", "vpc", "-O", "vhdx", "-o", "subformat=fixed",
                  str(single), str(out)]
    commands = {
        "vhdfs --to vhdx (3 layers)": [*vhdfs, str(top), str(out), "--to", "vhdx"],
        "vhdfs --to vhdx (same 1 layer)": [*vhdfs, str(single), str(out), "--to", "vhdx"],
        "qemu-img -O vhdx (1 layer)": qemu,
        "qemu-img -O vhdx + sync": ["sh", "-c", f'"$0" "$@" && sync "{out}"', *qemu],
        "vhdfs --to vhdx --fixed (3 layers)": [*vhdfs, str(top), str(out), "--to", "vhdx",
                                               "--fixed"],
        "qemu-img -O vhdx fixed + sync": ["sh", "-c", f'"$0" "$@" && sync "{out}"', *qemu_fixed],
    }
    r = measure_all(commands, out, runs)
    ours = r["vhdfs --to vhdx (3 layers)"]["seconds"]
    fixed = r["vhdfs --to vhdx --fixed (3 layers)"]["seconds"]
    print(f"ratio vhdfs (3 layers, durable) / qemu-img + sync (1 layer): "
          f"{ours / r['qemu-img -O vhdx + sync']['seconds']:.2f}; / qemu-img as it runs: "
          f"{ours / r['qemu-img -O vhdx (1 layer)']['seconds']:.2f}; fixed: "
          f"{fixed / r['qemu-img -O vhdx fixed + sync']['seconds']:.2f}")


def write_part(folder: Path, runs: int, seconds: float) -> None:
    single = folder / "single.vhd"
    base_vhdx = folder / "base.vhdx"
    if not base_vhdx.exists():
        with open_chain(str(single)) as chain:
            convert(chain, base_vhdx, "vhdx", block_size=2 * MiB)
    rates: dict[str, list[float]] = {"avhdx": [], "vhd": []}
    syncs: dict[str, list[float]] = {"avhdx": [], "vhd": []}
    for round_number in range(runs):
        for kind in ("avhdx", "vhd"):
            child = folder / f"child.{kind}"
            child.unlink(missing_ok=True)
            if kind == "avhdx":
                with open_chain(str(base_vhdx)) as chain:
                    create_vhdx_differencing(child, base_vhdx, chain.top, block_size=2 * MiB)
            else:
                with open_chain(str(single)) as chain:
                    create_differencing(child, parent_info_of(single, chain.top), 2 * MiB)
            rate, sync = mounted_writes(child, folder / "mnt", seconds, seed=round_number)
            rates[kind].append(rate)
            syncs[kind].append(sync)
            print(f"round {round_number}: {kind:<6} {rate:8.0f} writes/s, final fsync "
                  f"{syncs[kind][-1] * 1000:.0f} ms", flush=True)
    a, v = median(rates["avhdx"]), median(rates["vhd"])
    print(f"random 4 KiB writes through mount --rw: .avhdx {a:.0f}/s, .vhd {v:.0f}/s, ratio "
          f"{a / v:.2f} (target >= 0.80)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("bench-work/vhdx"))
    parser.add_argument("--size", default="2G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-convert", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("qemu-img") is None:
        sys.exit("qemu-img is missing (scripts/setup installs qemu-utils)")
    size = parse_size(args.size)
    print(f"disk: {size / GiB:.0f} GiB virtual")
    if not args.skip_convert:
        convert_part(args.folder, size, args.runs)
    elif not (args.folder / "single.vhd").exists():
        sys.exit("--skip-convert needs a previous run's chain in --folder")
    write_part(args.folder, args.runs, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
