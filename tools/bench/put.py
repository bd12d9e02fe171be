"""Benchmark: `vhdfs put` of a large file into the NTFS volume of a differencing child,
against ntfs-3g writing the same file into the same volume as a plain file.

    python -m tools.bench.put [--folder DIR] [--size 1G] [--file 128M] [--rounds 3]
                              [--before TREE]

The base is the demo's Windows-like disk (tests/fixtures/windows.py: MBR, two NTFS
partitions) of --size as a dynamic VHD. Each round, interleaved:
  - `vhdfs put child.vhd FILE /big.bin --volume 2` into a new empty child (wall time of the
    whole command: start-up, the private mount, ntfs-3g, the flush and the unmount);
  - with --before TREE, the same command run from another source tree (from TREE, with
    PYTHONPATH=TREE);
  - the anchor: the same volume as a plain partition file (a sparse copy, made outside the
    timing), `ntfs-3g -o windows_names,big_writes`, `cp FILE`, `umount`: ntfs-3g alone,
    with no image format and no FUSE below it.
Prints medians and a Markdown table for docs/benchmarks.md; the put's result is read back
with `vhdfs cat` and compared.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.content import make_png
from tests.fixtures.windows import build_windows_disk
from tools.bench.common import MiB
from vhdfs.partitions import list_partitions
from vhdfs.resolve import open_chain
from vhdfs.units import parse_size


def vhdfs(*args: object, tree: Path | None = None) -> float:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    started = time.monotonic()
    # `python -m` puts its working folder first on the path: run from the tree timed
    done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args), "-q"],
                          capture_output=True, text=True, env=env, cwd=tree)
    seconds = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"vhdfs {' '.join(map(str, args))} failed: {done.stderr}")
    return seconds


def build(folder: Path, size: int, length: int) -> tuple[Path, Path, Path]:
    """The base VHD, the file to put, and the Windows volume as a plain partition file."""
    raw = folder / "base.raw"
    build_windows_disk(raw, size, welcome_png=make_png(320, 200, 2012))
    base = folder / "base.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic", "--force")
    with open_chain(str(base)) as chain:
        volume = list_partitions(chain)[1]
        start, length_of_volume = volume.start, volume.length
    partition = folder / "p2.raw"
    with open(raw, "rb") as src, open(partition, "wb") as out:
        src.seek(start)
        left = length_of_volume
        while left:
            piece = src.read(min(left, 4 * MiB))
            if piece.strip(b"\x00"):
                out.write(piece)
            else:
                out.seek(len(piece), os.SEEK_CUR)
            left -= len(piece)
        out.truncate(length_of_volume)
    raw.unlink()
    big = folder / "big.bin"
    rng = random.Random(1)
    with open(big, "wb") as out:
        for at in range(0, length, 16 * MiB):
            out.write(rng.randbytes(min(16 * MiB, length - at)))
    return base, big, partition


def put_once(folder: Path, base: Path, big: Path, tree: Path | None) -> float:
    child = folder / "child.vhd"
    child.unlink(missing_ok=True)
    vhdfs("create", child, "--parent", base, tree=tree)
    return vhdfs("put", child, big, "/big.bin", "--volume", 2, tree=tree)


def ntfs3g_once(folder: Path, partition: Path, big: Path) -> float:
    work, mountpoint = folder / "p2-work.raw", folder / "mnt"
    subprocess.run(["cp", "--sparse=always", str(partition), str(work)], check=True)
    mountpoint.mkdir(exist_ok=True)
    started = time.monotonic()
    subprocess.run(["ntfs-3g", "-o", "windows_names,big_writes", str(work), str(mountpoint)],
                   check=True)
    try:
        shutil.copyfile(big, mountpoint / "big.bin")
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--file", default="128M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another vhdfs source tree, timed alike")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vhdfs-bench-put-"))
    folder.mkdir(parents=True, exist_ok=True)
    base, big, partition = build(folder, parse_size(args.size), parse_size(args.file))
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        times.setdefault("vhdfs put", []).append(put_once(folder, base, big, None))
        if args.before:
            times.setdefault("vhdfs put (before)", []).append(
                put_once(folder, base, big, args.before))
        times.setdefault("ntfs-3g on a plain file", []).append(ntfs3g_once(folder, partition, big))
    put_once(folder, base, big, None)
    done = subprocess.run([sys.executable, "-m", "vhdfs", "cat", str(folder / "child.vhd"),
                           "/big.bin", "--volume", "2"], capture_output=True, check=True)
    if done.stdout != big.read_bytes():
        raise SystemExit("the file put does not read back the same")
    anchor = statistics.median(times["ntfs-3g on a plain file"])
    megabytes = big.stat().st_size / MiB
    print(f"| command ({args.file} file, {args.rounds} rounds) | median | MiB/s | vs ntfs-3g |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median:.2f} s (runs {runs}) | {megabytes / median:.1f} | "
              f"{median / anchor:.2f}x |")


if __name__ == "__main__":
    main()
