"""Benchmark: reading a chain through `vhdfs mount`, libvhdi's vhdimount and a passthrough.

    python -m tools.bench.mount WORKDIR [--rounds 3] [--seconds 5] [--size 2G]

In WORKDIR (kept between runs; the chain is built once): a 3-layer chain (2 MiB blocks,
about 50% / 30% / 10% of blocks allocated, children written in 4 KiB-cluster runs), its flat
raw image (`vhdfs convert --to raw`), and three mounts of the same disk:
  vhdfs        `vhdfs mount TOP` (disk.raw)
  vhdimount    libvhdi's vhdimount on TOP (its top-layer file)
  passthrough  tools/bench/passthrough.py on the flat raw: the ceiling for a Python FUSE
               file system on this machine
Each round measures every target in turn (interleaved, so background load hits them alike):
a sequential `dd bs=1M` of the whole disk and random 4 KiB reads (O_DIRECT) with 1 and 4
reader processes. Page caches are warm: every target is read once before the first round.
Prints a Markdown table of medians and ratios, and the peak resident memory of our daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tools.bench.common import GiB, MiB, build_chain, median, peak_rss_bytes, unmount, wait_for_mount
from tools.bench.randread import iops
from vhdfs.units import parse_size

TARGETS = ("vhdfs", "vhdimount", "passthrough")


def dd_seconds(path: Path) -> float:
    done = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True,
                          text=True, check=True)
    match = re.search(r"copied, ([0-9.]+) s", done.stderr)
    if not match:
        raise RuntimeError(f"cannot read dd's timing: {done.stderr}")
    return float(match.group(1))


@contextlib.contextmanager
def mounted(command: list[str], point: Path, file_of: Callable[[Path], Path],
            detaches: bool = False) -> Iterator[tuple[Path, int]]:
    """Start a FUSE process (one that stays in the foreground, unless `detaches`); yields
    (the file to read, the pid of the process started)."""
    point.mkdir(parents=True, exist_ok=True)
    unmount(point)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if detaches:
        proc.wait(30)
    try:
        wait_for_mount(point, None if detaches else proc)
        deadline = time.monotonic() + 30
        while not file_of(point).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{point}: no file to read appeared")
            time.sleep(0.05)
        yield file_of(point), proc.pid
    finally:
        unmount(point)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def vhdi_top(point: Path) -> Path:
    files = sorted(point.glob("vhdi*"), key=lambda p: int(p.name[4:]))
    return files[-1] if files else point / "vhdi-missing"


def prepare(workdir: Path, size: int) -> tuple[Path, Path]:
    chain_dir = workdir / "chain"
    top = chain_dir / "layer2.vhd"
    flat = workdir / "flat.raw"
    stamp = workdir / f"built-{size}"
    if not stamp.exists():
        print(f"building a {size / GiB:g} GiB 3-layer chain in {chain_dir} ...", file=sys.stderr)
        build_chain(chain_dir, size=size)
        subprocess.run([sys.executable, "-m", "vhdfs", "-q", "convert", str(top), str(flat),
                        "--to", "raw", "--force"], check=True, stdout=subprocess.DEVNULL)
        stamp.touch()
    return top, flat


def run(workdir: Path, rounds: int, seconds: float, size: int) -> str:
    top, flat = prepare(workdir, size)
    commands = {
        "vhdfs": ([sys.executable, "-m", "vhdfs", "mount", str(top), str(workdir / "m-vhdfs"),
                   "--foreground"], workdir / "m-vhdfs", lambda p: p / "disk.raw"),
        "vhdimount": (["vhdimount", str(top), str(workdir / "m-vhdimount")],
                      workdir / "m-vhdimount", vhdi_top),
        "passthrough": ([sys.executable, "-m", "tools.bench.passthrough", str(flat),
                         str(workdir / "m-passthrough")], workdir / "m-passthrough",
                        lambda p: p / "disk.raw"),
    }
    results: dict[str, dict[str, list[float]]] = {t: {"seq": [], "r1": [], "r4": []} for t in TARGETS}
    peak_rss = 0
    with contextlib.ExitStack() as stack:
        files = {}
        pids = {}
        for target in TARGETS:
            command, point, file_of = commands[target]
            files[target], pids[target] = stack.enter_context(
                mounted(command, point, file_of, detaches=target == "vhdimount"))
            dd_seconds(files[target])  # warm: page cache, extent and bitmap caches
        for round_index in range(rounds):
            for target in TARGETS:
                seq = size / dd_seconds(files[target]) / 1e6
                r1 = iops(str(files[target]), 1, seconds, size)
                r4 = iops(str(files[target]), 4, seconds, size)
                results[target]["seq"].append(seq)
                results[target]["r1"].append(r1)
                results[target]["r4"].append(r4)
                print(f"round {round_index + 1} {target:12} {seq:7.0f} MB/s  {r1:7.0f} IOPS (1)  "
                      f"{r4:7.0f} IOPS (4)", file=sys.stderr)
        peak_rss = peak_rss_bytes(pids["vhdfs"])
    med = {t: {k: median(v) for k, v in m.items()} for t, m in results.items()}
    ours, theirs, ceiling = med["vhdfs"], med["vhdimount"], med["passthrough"]
    lines = [
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {rounds} rounds, {seconds:g} s per random run, medians.",
        "",
        "| measure | vhdfs | vhdimount | passthrough | vhdfs / passthrough | vhdfs / vhdimount |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, unit in (("seq", "sequential dd bs=1M", "MB/s"),
                             ("r1", "random 4 KiB, 1 reader", "IOPS"),
                             ("r4", "random 4 KiB, 4 readers", "IOPS")):
        lines.append(f"| {label} ({unit}) | {ours[key]:,.0f} | {theirs[key]:,.0f} | "
                     f"{ceiling[key]:,.0f} | {ours[key] / ceiling[key]:.0%} | "
                     f"{ours[key] / theirs[key]:.1f}x |")
    lines += ["", f"Peak resident memory of the vhdfs daemon: {peak_rss / MiB:.0f} MiB."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="2G")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(run(args.workdir.absolute(), args.rounds, args.seconds, parse_size(args.size, "--size")))


if __name__ == "__main__":
    main()
