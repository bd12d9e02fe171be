"""Benchmark: convert and upload with and without --skip-free, on a demo-like image where a
large file was written and deleted.

    python -m tools.bench.skipfree [--folder DIR] [--size 1G] [--deleted 300M] [--rounds 3]

The image is the demo's: a Windows-like base disk (tests/fixtures/windows.py, MBR, two NTFS
partitions) as a dynamic VHD and a differencing child, in which a file of --deleted random
bytes was written with `vhdfs put` and deleted with `vhdfs rm` (as a guest leaves a download
or a installer it removed): the child stores that data, NTFS counts its clusters free.
Measured, medians of --rounds interleaved rounds:
  - `vhdfs convert child.vhd out.vhd --to dynamic` with and without --skip-free: bytes read
    and written, the output file's size, wall time;
  - `vhdfs upload child.vhd az://...` with and without --skip-free against Azurite on
    127.0.0.1 (data in memory): bytes sent, wall time;
  - the free-space map alone (vhdfs.filesystems.free on the chain): its wall time.
Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
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
from tools.azurite import Azurite, azurite_binary
from tools.bench.common import MiB
from vhdfs.filesystems.free import free_space
from vhdfs.resolve import open_chain
from vhdfs.units import human, parse_size


def vhdfs(*args: object, env: dict[str, str] | None = None) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args), "-q", "--json"],
                          capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if done.returncode:
        raise SystemExit(f"vhdfs {' '.join(map(str, args))} failed: {done.stderr}")
    return json.loads(done.stdout), seconds


def build(folder: Path, size: int, deleted: int) -> Path:
    build_windows_disk(folder / "base.raw", size, welcome_png=make_png(320, 200, 2012))
    vhdfs("convert", folder / "base.raw", folder / "base.vhd", "--to", "dynamic")
    (folder / "base.raw").unlink()
    vhdfs("create", folder / "child.vhd", "--parent", folder / "base.vhd")
    big = folder / "setup.exe"
    rng = random.Random(1)
    with open(big, "wb") as out:  # incompressible, in pieces (randbytes takes at most 256 MiB)
        for at in range(0, deleted, 16 * MiB):
            out.write(rng.randbytes(min(16 * MiB, deleted - at)))
    vhdfs("put", folder / "child.vhd", big, "/setup.exe", "--volume", 2)
    vhdfs("rm", folder / "child.vhd", "/setup.exe", "--volume", 2)
    big.unlink()
    return folder / "child.vhd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--deleted", default="300M")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vhdfs-bench-skipfree-"))
    folder.mkdir(parents=True, exist_ok=True)
    size, deleted = parse_size(args.size), parse_size(args.deleted)
    child = build(folder, size, deleted)
    stored = child.stat().st_size
    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed (scripts/setup)")
    rows: dict[str, list[tuple[dict, float]]] = {}
    maps: list[float] = []
    with Azurite(binary, folder / "azurite", in_memory=True) as server:
        env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=server.connection_string)
        from tests.azure.helpers import service

        service(server.endpoint).create_container("bench")
        for round_ in range(args.rounds):
            for flags in ([], ["--skip-free"]):
                label = " ".join(flags) or "(none)"
                out = folder / "out.vhd"
                result, seconds = vhdfs("convert", child, out, "--to", "dynamic", "--force",
                                        *flags)
                result["file_size"] = out.stat().st_size
                rows.setdefault(f"convert {label}", []).append((result, seconds))
                result, seconds = vhdfs("upload", child, f"az://bench/r{round_}{len(flags)}.vhd",
                                        *flags, env=env)
                rows.setdefault(f"upload {label}", []).append((result, seconds))
            with open_chain(str(child)) as chain:
                started = time.monotonic()
                free_space(chain)
                maps.append(time.monotonic() - started)
    print(f"Image: {human(size)} Windows-like disk, child holding a deleted {human(deleted)} "
          f"file ({human(stored)} stored in child.vhd)\n")
    print("| command | read | written / sent | output file | left out as free | wall time |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        result = runs[-1][0]
        seconds = statistics.median(s for _, s in runs)
        if name.startswith("convert"):
            moved = f"{human(result['data_written'])}"
            read, output = human(result["data_read"]), human(result["file_size"])
        else:
            moved, read, output = human(result["sent"]), "", human(result["blob_size"])
        print(f"| `vhdfs {name}` | {read} | {moved} | {output} | "
              f"{human(result['skipped_free'])} | {seconds:.2f} s |")
    print(f"\nThe free-space map alone: {statistics.median(maps):.2f} s (median of {len(maps)})")
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
