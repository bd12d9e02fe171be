"""Benchmark: `vhdfs verify` and `vhdfs inspect` of the demo chain, local and from blob storage.

    python -m tools.bench.verify [--folder DIR] [--size 128M] [--size 2G ...]

For each --size (default: 128 MiB, the demo's disk, and 2 GiB): the demo's chain, a Windows
disk from tests/fixtures/windows.py (generalized, with its hives, the BCD and the agent) as a
dynamic base and a differencing child that replaced inetpub/wwwroot/Welcome.png (ntfs-3g on a
scratch copy of the volume, tests/fixtures/ntfsedit.py), uploaded to Azurite on 127.0.0.1 as
`bench/win-base.vhd` (flattened) and `bench/child.vhd` (--as-is, linked with set-parent).
Measured: wall time of `vhdfs verify` and `vhdfs inspect` of the local chain (the anchor) and of
the blob chain, and what the blob runs fetched (`--stats`: bytes and GET requests), against the
virtual size. Wall times include starting Python. Prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tests.azure.helpers import service, stats_of
from tests.fixtures.content import make_png
from tests.fixtures.ntfsedit import replace_ntfs_files
from tests.fixtures.windows import build_windows_disk
from tools.bench.common import azurite_work
from tools.bench.upload import vhdfs
from vhdfs.create import create_differencing, parent_info_of
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.units import human, parse_size
from vhdfs.vhd.layer import Layer

WELCOME = "inetpub/wwwroot/Welcome.png"


def build_demo_chain(folder: Path, size: int, env: dict) -> tuple[Path, Path]:
    raw = folder / "win.raw"
    build_windows_disk(raw, size, welcome_png=make_png(320, 200, 2012))
    base, child = folder / "win-base.vhd", folder / "child.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic", "--force", env=env)
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer), force=True)
    with open_chain(str(child), OpenOptions(), writable=True) as chain:
        replace_ntfs_files(chain, 2, {WELCOME: make_png(320, 200, 2024)})
    return base, child


def bench_size(folder: Path, env: dict, size: int, container: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    base, child = build_demo_chain(folder, size, env)
    service_client = service(env["BENCH_ENDPOINT"])
    service_client.create_container(container)
    vhdfs("upload", base, f"az://{container}/win-base.vhd", env=env)
    vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", env=env)
    vhdfs("set-parent", f"az://{container}/child.vhd", f"az://{container}/win-base.vhd", env=env)
    rows = []
    for command in ("verify", "inspect"):
        local, done = vhdfs(command, child, env=env)
        remote, remote_done = vhdfs(command, f"az://{container}/child.vhd", "--stats", env=env)
        if command == "verify" and b"Successfully passed the verification tests." \
                not in remote_done.stdout:
            raise SystemExit(f"remote verify did not pass:\n{remote_done.stdout.decode()}")
        stats = stats_of(remote_done.stderr.decode())
        share = stats["bytes_fetched"] / size * 100
        rows.append(f"| `vhdfs {command}` | {human(size)} | {local:.2f} s | {remote:.2f} s | "
                    f"{human(stats['bytes_fetched'])} ({share:.2f}%) | {stats['requests']} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--size", action="append", help="virtual size (repeatable; default "
                        "128M and 2G)")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in (args.size or ["128M", "2G"])]
    lines = ["| command | virtual size | local chain (anchor) | blob chain | fetched (of the "
             "virtual size) | GET requests |", "|---|---|---|---|---|---|"]
    with azurite_work(args.folder, "vhdfs-bench-verify-") as (server, folder):
        env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=server.connection_string,
                   BENCH_ENDPOINT=server.endpoint)
        for index, size in enumerate(sizes):
            lines += bench_size(folder / f"size{index}", env, size, f"bench{index}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
