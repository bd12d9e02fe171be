"""Benchmark: flatten a 3-layer chain to raw, against qemu-img and cp, in the same run.

    python -m tools.bench.convert [--folder DIR] [--size 4G] [--runs 3] [--out-dir DIR]

The chain: 4 GiB virtual, 2 MiB blocks, about 40% / 20% / 5% of blocks allocated (base,
middle, top; children fill about half of each block they allocate, in 4 KiB-cluster runs).
Measured, page cache warm, median of --runs (rounds interleave the commands):
  - `vhdfs convert top.vhd out.raw --to raw`
  - `qemu-img convert -O raw` of the same disk as one dynamic VHD (qemu cannot read chains
    of VHDs: it ignores the parent of a differencing disk), as it runs by default (no sync)
    and followed by `sync` of its output (vhdfs convert syncs its output before renaming it
    into place, so a crash never leaves a half-written file under the name)
  - `vhdfs convert` of that same one-layer VHD
  - `cp --sparse=always` of the flat raw image
Peak memory (max RSS) of each command comes from /usr/bin/time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.common import GiB, MiB, build_chain, median
from vhdfs.convert import convert
from vhdfs.resolve import open_chain
from vhdfs.units import parse_size


def timed(args: list[str], rss_file: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one command (RSS from /usr/bin/time, which
    measures the command itself, not the Python process that forked it)."""
    start = time.perf_counter()
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *args], check=True,
                   stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    return elapsed, int(rss_file.read_text().split()[-1]) * 1024


def measure_all(commands: dict[str, list[str]], out: Path, runs: int) -> dict[str, dict]:
    """Median wall time and peak RSS per command; rounds interleave the commands so a load
    on the machine hits them alike; the first round warms the page cache and is not counted."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    peaks: dict[str, int] = dict.fromkeys(commands, 0)
    for round_number in range(runs + 1):
        for label, args in commands.items():
            out.unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            seconds, peak = timed(args, out.with_suffix(".rss"))
            if round_number:
                times[label].append(seconds)
            peaks[label] = max(peaks[label], peak)
    out.unlink(missing_ok=True)
    results = {}
    for label in commands:
        results[label] = {"seconds": median(times[label]), "peak_rss": peaks[label]}
        print(f"{label:<40} {results[label]['seconds']:7.2f} s   peak RSS "
              f"{peaks[label] / MiB:6.1f} MiB", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("bench-work/convert"))
    parser.add_argument("--size", default="4G")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where outputs are written (default: --folder); a tmpfs such as "
                        "/dev/shm takes the disk's writeback and discard noise out")
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
    out = (args.out_dir or folder) / "out.raw"
    vhdfs = [sys.executable, "-m", "vhdfs", "-q", "convert"]
    qemu = ["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(single), str(out)]
    commands = {
        "vhdfs convert --to raw (3 layers)": [*vhdfs, str(top), str(out), "--to", "raw"],
        "qemu-img convert -O raw (1 layer)": qemu,
        "qemu-img convert + sync (durable)": ["sh", "-c", f'"$0" "$@" && sync "{out}"', *qemu],
        "vhdfs convert --to raw (same 1 layer)": [*vhdfs, str(single), str(out), "--to", "raw"],
        "cp --sparse=always (flat raw)": ["cp", "--sparse=always", str(flat), str(out)],
    }
    r = measure_all(commands, out, args.runs)
    ours = r["vhdfs convert --to raw (3 layers)"]
    print(f"ratio vhdfs (3 layers) / qemu-img (1 layer): "
          f"{ours['seconds'] / r['qemu-img convert -O raw (1 layer)']['seconds']:.2f} "
          f"(target <= 1.00); / qemu-img + sync: "
          f"{ours['seconds'] / r['qemu-img convert + sync (durable)']['seconds']:.2f}; "
          f"/ cp: {ours['seconds'] / r['cp --sparse=always (flat raw)']['seconds']:.2f}; "
          f"vhdfs peak RSS {ours['peak_rss'] / MiB:.0f} MiB (target < 200 MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
