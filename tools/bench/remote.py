"""Benchmark: remote reads through `vhdfs mount` and `vhdfs cat` against the Azure SDK, on Azurite.

    python -m tools.bench.remote [--folder DIR] [--size 1G] [--rounds 3] [--seconds 5]
                                 [--before TREE] [--parts seq,fio,cache]

Azurite 127.0.0.1 with its data on disk (tools/azurite.py), and the benchmark chain of
tools/bench/common.py (3 layers, 2 MiB blocks, 50% / 30% / 10% of the blocks allocated,
the children written in runs of 4 KiB clusters) put into a container as users do:
  bench/base.vhd           the base, uploaded flat (a fixed VHD page blob with holes where the
                           base has no block)
  bench/layer1.vhd, layer2.vhd  the children, uploaded --as-is (linked by their locators)
  bench/flat.vhd           the whole chain flattened (`vhdfs upload layer2.vhd`): the bytes of
                           the mount's disk.vhd, footer aside

Parts (every figure a median of --rounds rounds; the targets of a round run one after
another, interleaved, so that background load hits them alike):
  seq    the anchor: the SDK's own `BlobClient.download_blob(max_concurrency=8)` of flat.vhd
         into /dev/null; against `dd if=MNT/disk.vhd of=/dev/null bs=1M` on `vhdfs mount
         az://bench/flat.vhd MNT` (the same blob) and on `vhdfs mount az://bench/layer2.vhd
         MNT` (the chain of three blobs). Each mount is new (nothing cached in memory); the
         time is dd's alone. Bytes and requests fetched: the SDK's response bodies, the
         mount's `--stats` as `vhdfs umount` prints them.
  fio    on the chain's mount: fio sequential 1 MiB reads, and random 4 KiB reads (O_DIRECT,
         psync) with 1 and 4 jobs for --seconds each.
  cache  the persistent block cache (--cache-dir): dd of the chain's mount without the
         cache, with an empty cache folder (cold) and again (warm), in the same rounds;
         `vhdfs cat` of a 12 KiB file from a 2 GiB Windows chain (tests/fixtures/windows.py)
         cold, warm and without the cache, with the requests and bytes each fetched (--stats).
  upload (the upload against an in-memory sender: `python -m tools.bench.upload --parts
         sender` for now; see UPLOAD below)

--before TREE: also run the same mounts with the vhdfs of TREE (a source tree, e.g. `git
archive COMMIT | tar -x -C TREE`), in the same rounds: the figures before and after a change.

Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.azure.helpers import service, stats_of
from tests.fixtures.content import make_png
from tests.fixtures.windows import build_windows_disk
from tools.azurite import Azurite, azurite_binary
from tools.bench.common import GiB, build_chain, median, unmount
from vhdfs.create import create_differencing, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.units import human, parse_size
from vhdfs.vhd.layer import Layer

CONTAINER = "bench"
FLAT = f"az://{CONTAINER}/flat.vhd"
CHAIN = f"az://{CONTAINER}/layer2.vhd"
WELCOME = r"C:\inetpub\wwwroot\Welcome.png"


@dataclass
class Tree:
    """A vhdfs to run: this checkout (cwd None: the installed one) or another source tree."""

    label: str
    cwd: Path | None = None

    def run(self, *args: object, env: dict, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], env=env,
                              cwd=self.cwd, capture_output=True, timeout=900)
        if check and done.returncode:
            raise SystemExit(f"{self.label}: vhdfs {' '.join(map(str, args))} failed:\n"
                             f"{done.stderr.decode(errors='replace')}")
        return done


@dataclass
class Results:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float:
        return median(self.values[key])

    def spread(self, key: str) -> str:
        values = self.values[key]
        return f"{min(values):.0f}-{max(values):.0f}"


# ---------------------------------------------------------------------------- setup
def vhdfs_ok(*args: object, env: dict) -> subprocess.CompletedProcess:
    return Tree("setup").run(*args, env=env)


def prepare(folder: Path, size: int, env: dict, endpoint: str) -> dict[str, int]:
    """Upload the chain, unless a kept --folder has it already."""
    client = service(endpoint).get_blob_client(CONTAINER, "flat.vhd")
    if not client.exists():
        paths = build_chain(folder / "chain", size=size)
        with contextlib.suppress(Exception):  # there from an interrupted run
            service(endpoint).create_container(CONTAINER)
        base, *children = paths
        vhdfs_ok("-q", "upload", base, f"az://{CONTAINER}/base.vhd", env=env)
        for child in children:
            vhdfs_ok("-q", "upload", child, f"az://{CONTAINER}/{child.name}", "--as-is",
                     env=env)
        vhdfs_ok("-q", "upload", paths[-1], FLAT, env=env)
    if client.get_blob_properties().size != size + 512:
        raise SystemExit(f"{folder}: holds a chain of another size; use another --folder")
    ranges = client.get_page_ranges()[0]
    data = sum(r["end"] + 1 - r["start"] for r in ranges)
    return {"blob_size": client.get_blob_properties().size, "data": data}


def prepare_windows(folder: Path, env: dict, endpoint: str) -> bytes:
    """The chain of the remote cat (unless a kept --folder has it already); its file's bytes."""
    png = make_png(800, 600, seed=3)
    if service(endpoint).get_blob_client("win", "child.vhd").exists():
        return png
    raw = folder / "win.raw"
    build_windows_disk(raw, 2 * GiB, welcome_png=png)
    base, child = folder / "win-base.vhd", folder / "win-child.vhd"
    vhdfs_ok("-q", "convert", raw, base, "--to", "dynamic", "--force", env=env)
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer), force=True)
    with contextlib.suppress(Exception):  # there from an interrupted run
        service(endpoint).create_container("win")
    vhdfs_ok("-q", "upload", base, "az://win/bases/win-v1.vhd", env=env)
    vhdfs_ok("-q", "upload", child, "az://win/child.vhd", "--as-is", env=env)
    vhdfs_ok("-q", "set-parent", "az://win/child.vhd", "az://win/bases/win-v1.vhd", env=env)
    return png


# ---------------------------------------------------------------------------- measures
def sdk_download(endpoint: str, blob: str, concurrency: int = 8) -> tuple[float, int, int]:
    """Seconds, bytes fetched (response bodies) and requests of the SDK's own download."""
    client = service(endpoint).get_blob_client(CONTAINER, blob)
    fetched = [0, 0]

    def count(response) -> None:  # noqa: ANN001 - azure PipelineResponse
        fetched[0] += int(response.http_response.headers.get("Content-Length") or 0) \
            if response.http_request.method != "HEAD" else 0
        fetched[1] += 1

    with open(os.devnull, "wb") as sink:  # seekable, as the SDK's parallel download wants
        start = time.perf_counter()
        client.download_blob(max_concurrency=concurrency, raw_response_hook=count).readinto(sink)
        return time.perf_counter() - start, fetched[0], fetched[1]


def dd_seconds(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True,
                   check=True)
    return time.perf_counter() - start


def fio(path: Path, rw: str, bs: str, jobs: int, seconds: float | None) -> dict:
    args = ["fio", "--name=bench", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            "--direct=1", "--ioengine=psync", f"--numjobs={jobs}", "--group_reporting",
            "--output-format=json", "--randrepeat=0"]
    if seconds is not None:
        args += ["--time_based", f"--runtime={seconds}"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    read = json.loads(done.stdout)["jobs"][0]["read"]
    return {"iops": read["iops"], "bw": read["bw_bytes"]}


@dataclass
class Mount:
    disk: Path
    stats: dict[str, int] = field(default_factory=dict)  # the daemon's, at umount (--stats)


@contextlib.contextmanager
def mounted(tree: Tree, image: str, point: Path, env: dict, *extra: str) -> Iterator[Mount]:
    point.mkdir(parents=True, exist_ok=True)
    unmount(point)
    stats = ("--stats",) if tree.cwd is None else ()  # (a tree of before may not have it)
    tree.run("mount", image, point, *stats, *extra, env=env)
    mount = Mount(point / "disk.vhd")
    try:
        yield mount
    finally:
        done = tree.run("umount", point, env=env, check=False)
        if done.returncode:
            unmount(point)
        elif stats:
            mount.stats = stats_of(done.stderr.decode())


# ---------------------------------------------------------------------------- parts
def part_seq(trees: list[Tree], folder: Path, env: dict, endpoint: str, sizes: dict,
             rounds: int, results: Results) -> list[str]:
    blob = sizes["blob_size"]
    point = folder / "mnt"
    fetched: dict[str, str] = {}
    for _ in range(rounds):
        seconds, sdk_bytes, sdk_requests = sdk_download(endpoint, "flat.vhd")
        results.add("sdk", blob / seconds / 1e6)
        fetched["sdk"] = f"{human(sdk_bytes)} in {sdk_requests}"
        for tree in trees:
            for label, image in (("flat", FLAT), ("chain", CHAIN)):
                with mounted(tree, image, point, env) as mount:
                    results.add(f"{tree.label} {label}", blob / dd_seconds(mount.disk) / 1e6)
                if mount.stats:
                    fetched[f"{tree.label} {label}"] = \
                        f"{human(mount.stats['bytes_fetched'])} in {mount.stats['requests']}"
    sdk = results.median("sdk")
    lines = [f"Blob: {human(blob)} (flat.vhd; {human(sizes['data'])} of it written pages).", "",
             "| read of the whole disk | MB/s (median) | rounds | vs SDK | fetched, requests |",
             "|---|---|---|---|---|",
             f"| SDK `download_blob(max_concurrency=8)` of flat.vhd (anchor) | {sdk:.0f} | "
             f"{results.spread('sdk')} | 1.00 | {fetched['sdk']} |"]
    for tree in trees:
        for label, what in (("flat", "flat.vhd, the same blob"),
                            ("chain", "layer2.vhd, the chain of 3 blobs")):
            key = f"{tree.label} {label}"
            lines.append(f"| {tree.label}: `dd bs=1M` of disk.vhd, mount of {what} | "
                         f"{results.median(key):.0f} | {results.spread(key)} | "
                         f"{results.median(key) / sdk:.2f} | {fetched.get(key, '-')} |")
    return lines


def part_fio(trees: list[Tree], folder: Path, env: dict, rounds: int, seconds: float,
             results: Results) -> list[str]:
    point = folder / "mnt"
    tests = (("fio seq 1M", "read", "1M", 1, None), ("fio rand 4K x1", "randread", "4k", 1, seconds),
             ("fio rand 4K x4", "randread", "4k", 4, seconds))
    for _ in range(rounds):
        for tree in trees:
            for label, rw, bs, jobs, secs in tests:
                with mounted(tree, CHAIN, point, env) as mount:
                    got = fio(mount.disk, rw, bs, jobs, secs)
                results.add(f"{tree.label} {label}",
                            got["bw"] / 1e6 if rw == "read" else got["iops"])
    lines = ["| fio on the chain's mount (new mount each) | " +
             " | ".join(t.label for t in trees) + " |", "|---" * (len(trees) + 1) + "|"]
    for label, rw, *_ in tests:
        unit = "MB/s" if rw == "read" else "IOPS"
        lines.append(f"| {label} ({unit}) | " + " | ".join(
            f"{results.median(f'{t.label} {label}'):.0f}" for t in trees) + " |")
    return lines


def part_cache(tree: Tree, folder: Path, env: dict, endpoint: str, sizes: dict, rounds: int,
               results: Results) -> list[str]:
    blob = sizes["blob_size"]
    point = folder / "mnt"
    png = prepare_windows(folder, env, endpoint)
    env = dict(env, VHDFS_CACHE_SIZE="4G")  # the whole chain fits
    for _ in range(rounds):
        cache = folder / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("none", "cold", "warm"):  # without the cache too: in the same rounds
            extra = [] if state == "none" else ["--cache-dir", str(cache)]
            with mounted(tree, CHAIN, point, env, *extra) as mount:
                results.add(f"dd {state}", blob / dd_seconds(mount.disk) / 1e6)
            results.values[f"dd {state} stats"] = [mount.stats["requests"],
                                                   mount.stats["bytes_fetched"]]
        shutil.rmtree(cache, ignore_errors=True)
        for state in ("none", "cold", "warm"):
            extra = [] if state == "none" else ["--cache-dir", str(cache)]
            start = time.perf_counter()
            done = tree.run("cat", "az://win/child.vhd", WELCOME, "--stats", *extra, env=env)
            results.add(f"cat {state}", time.perf_counter() - start)
            if done.stdout != png:
                raise SystemExit("cat returned other bytes")
            stats = stats_of(done.stderr.decode())
            results.values[f"cat {state} stats"] = [stats["requests"], stats["bytes_fetched"]]
    shutil.rmtree(folder / "cache", ignore_errors=True)  # the chain's blocks: 835 MiB at 1G
    dd = [f"{results.median(f'dd {state}'):.0f} MB/s ({results.spread(f'dd {state}')}), "
          f"{int(results.values[f'dd {state} stats'][0])} requests, "
          f"{human(int(results.values[f'dd {state} stats'][1]))}"
          for state in ("none", "cold", "warm")]
    lines = ["| read | without cache | cold cache | warm cache |", "|---|---|---|---|",
             f"| `dd` of the chain's disk.vhd | {dd[0]} | {dd[1]} | {dd[2]} |"]
    cells = []
    for state in ("none", "cold", "warm"):
        requests, fetched = results.values[f"cat {state} stats"]
        cells.append(f"{results.median(f'cat {state}'):.2f} s, {int(requests)} requests, "
                     f"{human(int(fetched))}")
    lines.append("| `vhdfs cat az://win/child.vhd ...Welcome.png` | " + " | ".join(cells) + " |")
    return lines


# UPLOAD: the upload side of this benchmark (`vhdfs upload` against an in-memory sender doing
# the same ranged writes with 8 threads, start-up subtracted) is measured by
# `python -m tools.bench.upload --parts sender` for now (docs/benchmarks.md, "Upload against
# an in-memory sender"). Moved here, it becomes `part_upload`, called from main() where the
# UPLOAD comment is, with "upload" in the default of --parts.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--size", default="1G", help="virtual size of the chain (default 1G)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="of each random-read run")
    parser.add_argument("--before", type=Path, metavar="TREE",
                        help="also measure the vhdfs of this source tree")
    parser.add_argument("--parts", default="seq,fio,cache")
    args = parser.parse_args()
    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed: run scripts/setup")
    parts = set(args.parts.split(","))
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vhdfs-bench-remote-"))
    folder.mkdir(parents=True, exist_ok=True)
    trees = [Tree("vhdfs")]
    if args.before:
        trees.append(Tree("before", args.before.resolve()))
    results = Results()
    lines = [f"{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
             f"Python {platform.python_version()}", ""]
    try:
        with Azurite(binary, folder / "azurite") as server:
            env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=server.connection_string)
            env.pop("VHDFS_CACHE_DIR", None)
            sizes = prepare(folder, parse_size(args.size), env, server.endpoint)
            if "seq" in parts:
                lines += part_seq(trees, folder, env, server.endpoint, sizes, args.rounds,
                                  results) + [""]
            if "fio" in parts:
                lines += part_fio(trees, folder, env, args.rounds, args.seconds, results) + [""]
            if "cache" in parts:
                lines += part_cache(trees[0], folder, env, server.endpoint, sizes, args.rounds,
                                    results) + [""]
            # UPLOAD: if "upload" in parts: lines += part_upload(...) (see above)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
