"""Benchmark: upload to blob storage and lazy remote reads, against Azurite (127.0.0.1).

    python -m tools.bench.upload [--folder DIR] [--size 4G] [--data 400M] [--rounds 3]
                                 [--parts sdk,cat,pages,sender]

Upload: a dynamic VHD of --size holding --data of random (incompressible) data, laid out as
a file system leaves it: three quarters in files of 64 KiB to 8 MiB packed in the first
quarter of the disk with small gaps, one quarter in 256 KiB pieces scattered over the whole
disk. Measured in the same run, against the same Azurite (data on disk):
  - `vhdfs upload disk.vhd az://.../ours.vhd` (default --concurrency 8)
  - `vhdfs upload ... --concurrency 1`
  - the anchor: `BlobClient.upload_blob(f, blob_type="PageBlob")` of the same disk as a
    fixed VHD file (the SDK's own upload: it reads the whole file and skips 4 MiB chunks that
    are all zeros; default max_concurrency=1), and the same with max_concurrency=8.
Bytes sent are counted on the wire (request bodies).

Remote cat: a 2 GiB Windows disk (tests/fixtures/windows.py) as a dynamic base and a child that
changed inetpub/wwwroot/Welcome.png; the base uploaded flat, the child --as-is, linked with
set-parent; `vhdfs cat az://.../child.vhd 'C:\\inetpub\\wwwroot\\Welcome.png' --stats` against
the same `vhdfs cat` of the local chain.

Zero pages (--parts pages): bytes sent against the bytes of the non-zero 512-byte sectors of
the flat disk plus the 512-byte footer, on the chain of issue 14 (24 MiB, 512 KiB blocks,
three layers of short writes: tests/azure/helpers.py hidden_style_chain) and on the disk
above; and the upload's time against the same upload with zero detection switched off (every
page of every data extent sent), and against the start-up of the command (the same upload of
an empty disk of the same size, subtracted) and the in-memory sender of the same writes
(below; 8 threads, and on the chain also 32, as many small writes as the upload has in
flight at once), medians of --rounds interleaved rounds after one warm-up upload.

Sender (--parts sender): `vhdfs upload` (concurrency 8) against an in-memory sender doing the
same ranged writes with 8 threads: the writes of the same upload made beforehand and held in
memory, sent by 8 threads through vhdfs's own client (same transport, Content-MD5 and lease)
after creating the blob and taking the lease, the metadata set at the end. The command's
start-up (Python, imports, opening the chain, creating the blob, the lease, the footer, the
metadata) is measured as the same command uploading an empty disk of the same size, and
subtracted. Medians of --rounds interleaved rounds.

Prints Markdown tables for docs/benchmarks.md.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.azure.helpers import hidden_style_chain, service, stats_of
from tests.fixtures.content import make_png
from tests.fixtures.windows import build_windows_disk
from tools.azurite import Azurite, azurite_binary
from tools.bench.common import GiB, KiB, MiB
from vhdfs.azure.client import blob_client
from vhdfs.azure.credentials import parse_location
from vhdfs.azure.lease import LeaseKeeper
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.units import human, parse_size
from vhdfs.upload.source import plan_source
from vhdfs.vhd.layer import Layer


def build_disk(path: Path, size: int, data: int, seed: int = 1) -> int:
    """A dynamic VHD holding `data` bytes of random data; returns the bytes of data."""
    rng = random.Random(seed)
    create_dynamic(path, size, 2 * MiB, force=True)
    grain = 64 * KiB
    taken: set[int] = set()  # 64 KiB grains in use
    pieces: list[tuple[int, int]] = []
    packed, pos = data * 3 // 4, 0
    while packed > 0:  # files packed in the first quarter
        length = min(packed, rng.randint(1, 128) * grain)
        pos += rng.randint(0, 4) * grain
        pieces.append((pos, length))
        taken.update(range(pos // grain, (pos + length) // grain))
        pos += length
        packed -= length
    if pos > size // 4:
        raise SystemExit(f"--data {human(data)} does not fit the layout of a {human(size)} disk")
    scattered = data - data * 3 // 4
    piece = 4 * grain
    while scattered > 0:  # and pieces all over the disk
        start = rng.randrange(size // piece) * piece
        grains = range(start // grain, start // grain + piece // grain)
        if taken.intersection(grains):
            continue
        length = min(piece, scattered)
        pieces.append((start, length))
        taken.update(grains)
        scattered -= length
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        for start, length in sorted(pieces):
            layer.write(start, rng.randbytes(length))
    return sum(length for _, length in pieces)


def vhdfs(*args: object, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"vhdfs {' '.join(map(str, args))} failed:\n"
                         f"{done.stderr.decode(errors='replace')}")
    return seconds, done


def sdk_upload(endpoint: str, container: str, name: str, fixed: Path,
               concurrency: int) -> tuple[float, int]:
    sent = [0]

    def count(request) -> None:  # noqa: ANN001 - azure PipelineRequest
        sent[0] += int(request.http_request.headers.get("Content-Length") or 0)

    client = service(endpoint).get_blob_client(container, name)
    start = time.perf_counter()
    with open(fixed, "rb") as handle:
        client.upload_blob(handle, blob_type="PageBlob", length=fixed.stat().st_size,
                           overwrite=True, max_concurrency=concurrency, raw_request_hook=count)
    return time.perf_counter() - start, sent[0]


def bench_upload(folder: Path, server: Azurite, env: dict, size: int, data: int) -> list[str]:
    disk = folder / "disk.vhd"
    held = build_disk(disk, size, data)
    fixed = folder / "disk-fixed.vhd"
    vhdfs("convert", disk, fixed, "--to", "fixed", "--force", env=env)
    service(server.endpoint).create_container("bench")
    rows = []
    ours, done = vhdfs("upload", disk, "az://bench/ours.vhd", "--stats", env=env)
    sent = stats_of(done.stderr.decode())["bytes_sent"]
    one, done1 = vhdfs("upload", disk, "az://bench/ours1.vhd", "--concurrency", "1", "--stats",
                       env=env)
    sent1 = stats_of(done1.stderr.decode())["bytes_sent"]
    sdk, sdk_sent = sdk_upload(server.endpoint, "bench", "sdk.vhd", fixed, 1)
    sdk8, sdk8_sent = sdk_upload(server.endpoint, "bench", "sdk8.vhd", fixed, 8)
    same = [service(server.endpoint).get_blob_client("bench", n).download_blob(
        offset=0, length=64 * MiB).readall() for n in ("ours.vhd", "sdk.vhd")]
    if same[0] != same[1]:
        raise SystemExit("the uploads differ")
    extra = (sent - held - 512) / held * 100
    rows.append(f"| `vhdfs upload` (concurrency 8) | {ours:.1f} s | {human(sent)} "
                f"({extra:+.2f}% of the data held) | 1.0 |")
    rows.append(f"| `vhdfs upload --concurrency 1` | {one:.1f} s | {human(sent1)} | "
                f"{one / ours:.1f}x slower |")
    rows.append(f"| SDK `upload_blob(blob_type=\"PageBlob\")` (anchor, max_concurrency=1) | "
                f"{sdk:.1f} s | {human(sdk_sent)} | {sdk / ours:.1f}x slower |")
    rows.append(f"| SDK `upload_blob(..., max_concurrency=8)` | {sdk8:.1f} s | {human(sdk8_sent)} "
                f"| {sdk8 / ours:.1f}x slower |")
    head = [f"Disk: {human(size)} dynamic VHD holding {human(held)} of data ({held} bytes).", "",
            "| upload | wall time | bytes sent | vs ours |", "|---|---|---|---|"]
    return head + rows


def bench_cat(folder: Path, server: Azurite, env: dict) -> list[str]:
    png = make_png(800, 600, seed=3)
    raw = folder / "win.raw"
    build_windows_disk(raw, 2 * GiB, welcome_png=png)
    base, child = folder / "win-base.vhd", folder / "win-child.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic", "--force", env=env)
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer), force=True)
    service(server.endpoint).create_container("win")
    vhdfs("upload", base, "az://win/bases/win-v1.vhd", env=env)
    vhdfs("upload", child, "az://win/child.vhd", "--as-is", env=env)
    vhdfs("set-parent", "az://win/child.vhd", "az://win/bases/win-v1.vhd", env=env)
    path = r"C:\inetpub\wwwroot\Welcome.png"
    local, _ = vhdfs("cat", child, path, env=env)
    remote, done = vhdfs("cat", "az://win/child.vhd", path, "--stats", env=env)
    if done.stdout != png:
        raise SystemExit("remote cat returned other bytes")
    stats = stats_of(done.stderr.decode())
    share = stats["bytes_fetched"] / (2 * GiB) * 100
    return ["| command | wall time | fetched | requests |", "|---|---|---|---|",
            f"| `vhdfs cat` of the local chain (anchor) | {local:.2f} s | - | - |",
            f"| `vhdfs cat az://win/child.vhd ...` | {remote:.2f} s | "
            f"{human(stats['bytes_fetched'])} ({share:.2f}% of 2 GiB) | {stats['requests']} |"]


# ---------------------------------------------------------------------------- zero pages
# `vhdfs upload` with zero detection switched off: every page of every data extent is sent.
NO_ZERO_CHECK = ("import sys\n"
                 "import vhdfs.upload.planning as planning\n"
                 "planning.nonzero_pages = lambda buf, start, end: [(start, end)] if end > start "
                 "else []\n"
                 "from vhdfs.cli import run\n"
                 "sys.argv[0] = 'vhdfs'\n"
                 "sys.exit(run())\n")


def upload_command(*args: object, env: dict, zero_check: bool = True, tree: Path | None = None
                   ) -> tuple[float, subprocess.CompletedProcess]:
    """`vhdfs -q upload ARGS --stats`, timed; with `tree`, the vhdfs of that source tree."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "vhdfs"] if zero_check else \
        [sys.executable, "-c", NO_ZERO_CHECK]
    done = subprocess.run([*command, "-q", "upload", *map(str, args), "--stats", "--overwrite"],
                          capture_output=True, env=env, cwd=tree)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"vhdfs upload {' '.join(map(str, args))} failed:\n"
                         f"{done.stderr.decode(errors='replace')}")
    return seconds, done


def nonzero_sector_bytes(image: Path) -> int:
    """Bytes of the flat disk's sectors that hold a non-zero byte (a plain loop over the
    data extents: independent of the upload's own zero check)."""
    count = 0
    with open_chain(str(image), allow_raw=True) as chain:
        for offset in range(0, chain.size, 4 * MiB):
            length = min(4 * MiB, chain.size - offset)
            if all(e.is_zero for e in chain.iter_extents(offset, length)):
                continue
            data = chain.read(offset, length)
            zero = bytes(512)
            count += sum(1 for at in range(0, length, 512) if data[at:at + 512] != zero)
    return count * 512


def bench_pages(folder: Path, server: Azurite, env: dict, size: int, data: int,
                rounds: int, before: Path | None = None) -> list[str]:
    small = hidden_style_chain(_fresh(folder / "pages-chain"))
    disk = folder / "disk.vhd"
    if not disk.exists():
        build_disk(disk, size, data)
    with_check_container(server, "pages")
    upload_command(small, "az://pages/warm-up.vhd", env=env)  # Azurite's first requests
    rows = ["| disk | non-zero sectors + footer | bytes sent | ratio | writes | upload | "
            "less start-up | in-memory sender, same writes | without zero detection (sent) |"
            + (" before, less start-up |" if before else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if before else "")]
    runs: list[str] = []
    for label, image, virtual in (
            ("24 MiB chain, 512 KiB blocks, short writes (3 layers)", small, 24 * MiB),
            (f"{human(size)} dynamic VHD, {human(data)} of data", disk, size)):
        want = nonzero_sector_bytes(image) + 512
        empty = folder / f"pages-empty-{virtual}.vhd"
        create_dynamic(empty, virtual, 2 * MiB, force=True)
        times: dict[str, list[float]] = {}
        sent: dict[str, int] = {}
        writes = 0
        for index in range(rounds):
            kinds = ["ours", "plain", "startup", "memory"]
            kinds += ["memory32"] if image is small else []  # as many threads as small writes
            kinds += ["before"] if before else []
            for kind in kinds:
                name = f"az://pages/{image.stem}-{kind}-{index}.vhd"
                if kind.startswith("memory"):
                    threads = 32 if kind == "memory32" else 8
                    times.setdefault(kind, []).append(memory_sender(env, name, image.resolve(),
                                                                    threads))
                    continue
                seconds, done = upload_command(
                    empty if kind == "startup" else image.resolve(), name, env=env,
                    zero_check=kind != "plain", tree=before if kind == "before" else None)
                times.setdefault(kind, []).append(seconds)
                stats = stats_of(done.stderr.decode())
                sent[kind] = stats["bytes_sent"]
                writes = stats["requests"] if kind == "ours" else writes
        med = {kind: statistics.median(values) for kind, values in times.items()}
        row = (f"| {label} | {want} | {sent['ours']} | {sent['ours'] / want:.4f} | "
               f"{writes} requests | {med['ours']:.2f} s | {med['ours'] - med['startup']:.2f} s | "
               f"{med['memory']:.2f} s" + (f" (32 threads: {med['memory32']:.2f} s)"
                                            if "memory32" in med else "") +
               f" | {med['plain']:.2f} s ({sent['plain']}, "
               f"{sent['plain'] / want:.2f}x) |")
        if before:
            row += f" {med['before'] - med['startup']:.2f} s |"
        rows.append(row)
        runs.append(f"runs ({image.name}): " + "; ".join(
            f"{kind} {', '.join(f'{x:.2f}' for x in values)}" for kind, values in times.items()))
    return [*rows, "", *runs]


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def with_check_container(server: Azurite, name: str) -> None:
    client = service(server.endpoint).get_container_client(name)
    if not client.exists():
        client.create_container()


# ---------------------------------------------------------------------------- sender
def memory_sender(env: dict, dest: str, image: Path, concurrency: int = 8) -> float:
    """The writes `vhdfs upload image` makes, made beforehand and held in memory, then sent
    by `concurrency` threads through vhdfs's own client, as the upload sends them (create
    the blob, take the lease, write with Content-MD5, set the metadata). Returns seconds
    from creating the blob to the metadata."""
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = env["AZURE_STORAGE_CONNECTION_STRING"]
    plan = plan_source(str(image))
    try:
        writes = list(plan.writes(None))
    finally:
        plan.close()
    client = blob_client(parse_location(dest))
    start = time.perf_counter()
    client.create_page_blob(size=plan.blob_size, metadata={"vhdfs_state": "uploading"})  # replaces
    keeper = LeaseKeeper(client, dest)
    lease = keeper.acquire()
    try:
        def send(write) -> None:  # noqa: ANN001 - planning.Write
            client.upload_page(write.data, offset=write.offset, length=write.length, lease=lease,
                               validate_content=True)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, writes))
        client.set_blob_metadata({"vhdfs_state": "complete"}, lease=lease)
    finally:
        keeper.release()
    return time.perf_counter() - start


def bench_sender(folder: Path, server: Azurite, env: dict, size: int, data: int,
                 rounds: int, before: Path | None = None) -> list[str]:
    disk = folder / "disk.vhd"
    if not disk.exists():
        build_disk(disk, size, data)
    empty = folder / "empty.vhd"
    create_dynamic(empty, size, 2 * MiB, force=True)
    with_check_container(server, "sender")
    ours, startup, anchor, old, old_startup = [], [], [], [], []
    disk, empty = disk.resolve(), empty.resolve()
    for index in range(rounds):
        seconds, _ = upload_command(disk, f"az://sender/ours-{index}.vhd", env=env)
        ours.append(seconds)
        seconds, _ = upload_command(empty, f"az://sender/empty-{index}.vhd", env=env)
        startup.append(seconds)
        anchor.append(memory_sender(env, f"az://sender/memory-{index}.vhd", disk))
        if before is not None:
            seconds, _ = upload_command(disk, f"az://sender/old-{index}.vhd", env=env,
                                        tree=before)
            old.append(seconds)
            seconds, _ = upload_command(empty, f"az://sender/old-empty-{index}.vhd", env=env,
                                        tree=before)
            old_startup.append(seconds)
    net = [o - s for o, s in zip(ours, startup, strict=True)]
    ratio = statistics.median(anchor) / statistics.median(net)
    lines = []
    if before is not None:
        old_net = [o - s for o, s in zip(old, old_startup, strict=True)]
        old_ratio = statistics.median(anchor) / statistics.median(old_net)
        lines = [f"| `vhdfs upload` of {before} (before), less its start-up | "
                 f"{statistics.median(old_net):.2f} (**{old_ratio:.2f}x** the sender) |"]
    return [f"Disk: {human(size)} dynamic VHD holding {human(data)} of data; medians of {rounds}.",
            "", "| | seconds |", "|---|---|", *lines,
            f"| `vhdfs upload` (concurrency 8), wall time | {statistics.median(ours):.2f} |",
            f"| start-up: the same command uploading an empty disk of {human(size)} | "
            f"{statistics.median(startup):.2f} |",
            f"| `vhdfs upload` less start-up | {statistics.median(net):.2f} |",
            f"| in-memory sender, the same writes, 8 threads (the limit) | "
            f"{statistics.median(anchor):.2f} |",
            "", f"vhdfs upload at **{ratio:.2f}x** the in-memory sender's speed "
            f"(runs: ours {', '.join(f'{x:.2f}' for x in net)}; sender "
            f"{', '.join(f'{x:.2f}' for x in anchor)})."]


PARTS = ("sdk", "cat", "pages", "sender")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--size", default="4G")
    parser.add_argument("--data", default="400M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--before", type=Path,
                        help="pages, sender: also time the vhdfs of this source tree (e.g. `git archive "
                        "COMMIT | tar -x -C TREE`), in the same rounds")
    args = parser.parse_args()
    parts = args.parts.split(",")
    binary = azurite_binary()
    if binary is None:
        raise SystemExit("Azurite is not installed: run scripts/setup")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vhdfs-bench-upload-"))
    folder.mkdir(parents=True, exist_ok=True)
    size, data = parse_size(args.size), parse_size(args.data)
    lines: list[str] = []
    try:
        with Azurite(binary, folder / "azurite") as server:
            env = dict(os.environ, AZURE_STORAGE_CONNECTION_STRING=server.connection_string)
            if "sdk" in parts:
                lines += bench_upload(folder, server, env, size, data) + [""]
            if "cat" in parts:
                lines += bench_cat(folder, server, env) + [""]
            if "pages" in parts:
                lines += bench_pages(folder, server, env, size, data, args.rounds,
                                     args.before) + [""]
            if "sender" in parts:
                lines += bench_sender(folder, server, env, size, data, args.rounds,
                                      args.before) + [""]
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
