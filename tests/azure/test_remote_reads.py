"""Streaming a remote chain through a real mount: the read-ahead keeps N ranged GETs in flight
across the blob's holes (counted at the fault proxy, which makes each GET take a while), every
byte is right across holes and layer boundaries whatever the read sizes, a read costs one
request (no page-range listing behind each GET), and `mount --stats` reports the daemon's
totals in its log and at `vhdfs umount`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azure.azurite import FaultProxy, connection_string
from tests.azure.helpers import MiB, stats_of, vhdfs, write_layer
from tests.tooling import force_unmount
from vhdfs.azure.blob import FETCH_THREADS
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

SIZE = 128 * MiB


@pytest.fixture(scope="module")
def striped_chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base with data in stripes of 3 MiB and holes of 1 MiB (never written: holes of the
    flat blob too), a child over it whose writes cross block boundaries, fill holes and
    zero some of the base's data, and the chain flattened locally."""
    folder = tmp_path_factory.mktemp("striped")
    rng = random.Random(11)
    base, child, flat = folder / "base.vhd", folder / "child.vhd", folder / "flat.raw"
    create_dynamic(base, SIZE)
    write_layer(base, [(at, rng.randbytes(3 * MiB)) for at in range(0, SIZE, 4 * MiB)])
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    write_layer(child, [(2 * MiB - 4096, rng.randbytes(8192)),  # across a block boundary
                        (7 * MiB, rng.randbytes(MiB + 512)),  # over a hole of the base
                        (40 * MiB, bytes(64 * 1024)),  # zeros over the base's data
                        (SIZE - 512, rng.randbytes(512))])
    vhdfs("convert", child, flat, "--to", "raw")
    return {"base": base, "child": child, "flat": flat}


def upload_chain(chain: dict[str, Path], container: str, env: dict) -> str:
    vhdfs("upload", chain["base"], f"az://{container}/bases/base.vhd", env=env)
    vhdfs("upload", chain["child"], f"az://{container}/child.vhd", "--as-is", env=env)
    vhdfs("set-parent", f"az://{container}/child.vhd", f"az://{container}/bases/base.vhd",
          env=env)
    return f"az://{container}/child.vhd"


@contextlib.contextmanager
def mounted(image: str, point: Path, env: dict, *extra: str) -> Iterator[Path]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    point.mkdir(exist_ok=True)
    vhdfs("mount", image, point, *extra, env=env)
    try:
        yield point
    finally:
        force_unmount(point)


def read_in_pieces(path: Path, sizes: list[int]) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of `path` read from start to end in pieces of the given sizes, in turn."""
    with open(path, "rb", buffering=0) as handle:
        offset, turn = 0, 0
        while True:
            data = handle.read(sizes[turn % len(sizes)])
            if not data:
                return
            yield offset, data
            offset += len(data)
            turn += 1


def test_sequential_reads_are_right_across_holes_and_layers(
        striped_chain: dict[str, Path], env: dict, container: str, tmp_path: Path) -> None:
    image = upload_chain(striped_chain, container, env)
    sizes = [MiB, 333_333, 4096, 2 * MiB + 512, 65_536, 1]
    with mounted(image, tmp_path / "mnt", env) as point, open(striped_chain["flat"], "rb") as flat:
        assert os.stat(point / "disk.raw").st_size == SIZE
        for offset, data in read_in_pieces(point / "disk.raw", sizes):
            flat.seek(offset)
            assert data == flat.read(len(data)), f"disk.raw differs at {offset}+{len(data)}"
        assert offset + len(data) == SIZE
        # disk.vhd: the same bytes and a footer, read in 1 MiB pieces as dd does.
        digest = hashlib.sha256()
        for at, data in read_in_pieces(point / "disk.vhd", [MiB]):
            digest.update(data[:max(0, SIZE - at)])
        assert at + len(data) == SIZE + 512
        flat.seek(0)
        assert digest.digest() == hashlib.sha256(flat.read()).digest()


def test_the_mount_keeps_n_gets_in_flight_and_reports_its_stats_at_umount(
        striped_chain: dict[str, Path], env: dict, container: str, proxy: FaultProxy,
        tmp_path: Path) -> None:
    image = upload_chain(striped_chain, container, env)
    through = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    proxy.clear()
    proxy.add("delay", -1, method="GET", seconds=0.05)  # every GET takes a while: they overlap
    log = tmp_path / "mount.log"
    point = tmp_path / "mnt"
    with mounted(image, point, through, "--stats", "--log", str(log)):
        with open(point / "disk.raw", "rb", buffering=0) as mounted_disk, \
                open(striped_chain["flat"], "rb") as flat:
            while data := mounted_disk.read(MiB):
                assert data == flat.read(len(data))
        gets = [s for s in proxy.requests() if s.method == "GET" and "x-ms-range" in s.headers]
        # N ranged GETs in flight while the reader streams over the base's 32 holes.
        assert proxy.most_reads_at_once >= FETCH_THREADS, proxy.most_reads_at_once
        # One request per read: no listing of the whole blob's page ranges behind each GET.
        listings = [s for s in proxy.requests() if "comp=pagelist" in s.path]
        assert len(listings) <= 2 and all("x-ms-range" in s.headers for s in listings)
        data_gets = [s for s in gets if "comp=" not in s.path]
        held = 3 * SIZE // 4 + 2 * MiB  # the base's stripes and the child's writes, roughly
        assert len(data_gets) <= held // (4 * MiB) + 2 * 32 + 8, len(data_gets)
        done = vhdfs("umount", point, "--json", env=through)
    seen = len(proxy.requests())
    result = json.loads(done.stdout)
    assert result["stats"]["requests"] == seen  # opening (before the fork) and serving
    assert result["stats"]["memory_hits"] > 0
    line = next(x for x in done.stderr.splitlines() if x.startswith("vhdfs: stats:"))
    assert stats_of(line)["requests"] == seen
    assert f"stats: fetched {result['stats']['bytes_fetched']} bytes" in log.read_text()


def test_umount_prints_no_stats_without_mount_stats(striped_chain: dict[str, Path], env: dict,
                                                    container: str, tmp_path: Path) -> None:
    image = upload_chain(striped_chain, container, env)
    point = tmp_path / "mnt"
    with mounted(image, point, env):
        assert "user.vhdfs.stats" not in os.listxattr(point)
        done = vhdfs("umount", point, "--json", env=env)
    assert json.loads(done.stdout)["stats"] is None
    assert "stats" not in done.stderr
