"""The persistent block cache (--cache-dir, VHDFS_CACHE_DIR): a second `vhdfs cat` fetches
nothing but the blobs' properties, a rewritten blob (new ETag) drops its entries and reads the
new bytes, the size bound holds, two commands filling the cache at once both read right and
leave no damaged entry, a damaged entry is detected and read again, and no name or byte in the
cache holds a secret. Then the pieces on their own: entries, trimming, a folder others could
write."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.azure.azurite import ACCOUNT, KEY, Azurite, FaultProxy, connection_string
from tests.azure.helpers import MiB, make_chain, stats_of, vhdfs, write_layer
from tests.fixtures.content import make_png
from tests.fixtures.windows import build_windows_disk
from vhdfs.azure import blockcache
from vhdfs.azure.blob import RangeCache
from vhdfs.azure.blockcache import ENTRY, FORMAT_FOLDER, CacheFolder
from vhdfs.azure.location import parse_blob_url
from vhdfs.create import create_differencing, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

WELCOME = r"C:\inetpub\wwwroot\Welcome.png"
BLOCK = 256 * 1024


def through(env: dict, proxy: FaultProxy, **extra: str) -> dict:
    return dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint), **extra)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / FORMAT_FOLDER).rglob("*") if p.is_file())


def assert_whole(cache: Path) -> None:
    """Every entry parses (length and CRC-32C) and sits in the folder of its own key."""
    found = entries(cache)
    assert found
    for path in found:
        assert not path.name.startswith(".tmp-"), path
        entry = ENTRY.parse(path.read_bytes())
        kind = {"b": blockcache.KIND_BLOCK, "r": blockcache.KIND_RANGES}[path.name[0]]
        assert entry.head.value.kind == kind and entry.head.value.index == int(path.name[1:], 16)


@pytest.fixture(scope="module")
def windows_chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small Windows disk as a dynamic base and a child that rewrote part of Welcome.png."""
    folder = tmp_path_factory.mktemp("wincache")
    png = make_png(640, 480, seed=8)
    raw = folder / "win.raw"
    build_windows_disk(raw, welcome_png=png)
    base, child = folder / "base.vhd", folder / "child.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic")
    data = raw.read_bytes()
    at = data.find(png)
    assert at > 0 and at % 512 == 0
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    patch = random.Random(9).randbytes(1024)
    write_layer(child, [(at + 2048, patch)])
    return {"base": base, "child": child, "expected": png[:2048] + patch + png[3072:]}


def test_a_second_cat_fetches_only_the_properties(windows_chain: dict, env: dict, container: str,
                                                  proxy: FaultProxy, tmp_path: Path) -> None:
    vhdfs("upload", windows_chain["base"], f"az://{container}/bases/win.vhd", env=env)
    vhdfs("upload", windows_chain["child"], f"az://{container}/child.vhd", "--as-is", env=env)
    vhdfs("set-parent", f"az://{container}/child.vhd", f"az://{container}/bases/win.vhd", env=env)
    cache = tmp_path / "cache"
    image = f"az://{container}/child.vhd"
    proxy.clear()
    first = vhdfs("cat", image, WELCOME, "--stats", env=through(env, proxy, VHDFS_CACHE_DIR=str(
        cache)), text=False)  # the environment's folder ...
    assert first.stdout == windows_chain["expected"]
    assert any(s.method == "GET" for s in proxy.requests())
    assert_whole(cache)
    proxy.clear()
    second = vhdfs("cat", image, WELCOME, "--stats", "--cache-dir", cache,  # ... or the option
                   env=through(env, proxy), text=False)
    assert second.stdout == windows_chain["expected"]
    seen = proxy.requests()
    assert [s.method for s in seen] == ["HEAD", "HEAD"], [(s.method, s.path) for s in seen]
    stats = stats_of(second.stderr.decode())
    assert stats["requests"] == 2 and stats["bytes_fetched"] == 0
    assert "from the cache folder" in second.stderr.decode()
    # Without the cache, the same cat fetches again.
    proxy.clear()
    third = vhdfs("cat", image, WELCOME, env=through(env, proxy), text=False)
    assert third.stdout == windows_chain["expected"]
    assert any(s.method == "GET" for s in proxy.requests())


def test_a_new_etag_drops_the_entries_and_reads_the_new_bytes(env: dict, container: str,
                                                              tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    _, child1 = make_chain(first, seed=1)
    _, child2 = make_chain(second, seed=2)
    blob = f"az://{container}/disk.vhd"
    cache = tmp_path / "cache"
    vhdfs("upload", child1, blob, env=env)
    vhdfs("convert", blob, tmp_path / "a.raw", "--to", "raw", "--cache-dir", cache, env=env)
    vhdfs("convert", child1, tmp_path / "a-local.raw", "--to", "raw", env=env)
    assert (tmp_path / "a.raw").read_bytes() == (tmp_path / "a-local.raw").read_bytes()
    [blob_folder] = (cache / FORMAT_FOLDER).iterdir()
    [old_etag] = blob_folder.iterdir()
    vhdfs("upload", child2, blob, "--overwrite", env=env)  # a new ETag
    again = vhdfs("convert", blob, tmp_path / "b.raw", "--to", "raw", "--cache-dir", cache,
                  "--stats", env=env)
    assert stats_of(again.stderr)["bytes_fetched"] > 10 * MiB  # not from the cache
    vhdfs("convert", child2, tmp_path / "b-local.raw", "--to", "raw", env=env)
    assert (tmp_path / "b.raw").read_bytes() == (tmp_path / "b-local.raw").read_bytes()
    assert (tmp_path / "b.raw").read_bytes() != (tmp_path / "a.raw").read_bytes()
    [new_etag] = blob_folder.iterdir()
    assert new_etag != old_etag and not old_etag.exists()


def test_the_size_bound_holds(env: dict, container: str, tmp_path: Path) -> None:
    _, child = make_chain(tmp_path)  # about 13 MiB of data
    blob = f"az://{container}/disk.vhd"
    vhdfs("upload", child, blob, env=env)
    local = tmp_path / "local.raw"
    vhdfs("convert", child, local, "--to", "raw", env=env)
    cache = tmp_path / "cache"
    bounded = dict(env, VHDFS_CACHE_SIZE="2M")
    for run in range(2):
        out = tmp_path / f"out{run}.raw"
        vhdfs("convert", blob, out, "--to", "raw", "--cache-dir", cache, env=bounded)
        assert out.read_bytes() == local.read_bytes()
        total = sum(p.stat().st_size for p in entries(cache))
        assert 0 < total <= 2 * MiB, total
        assert_whole(cache)


def test_two_commands_fill_the_cache_at_once(env: dict, container: str, proxy: FaultProxy,
                                             tmp_path: Path) -> None:
    """Two converts of the same blob share one cache folder (small, so that they also trim
    under each other); both outputs are right, and every entry left is whole. Then damaged
    entries (cut short, garbage, one flipped bit) are read from the blob again."""
    _, child = make_chain(tmp_path)
    blob = f"az://{container}/disk.vhd"
    vhdfs("upload", child, blob, env=env)
    local = tmp_path / "local.raw"
    vhdfs("convert", child, local, "--to", "raw", env=env)
    cache = tmp_path / "cache"
    shared = dict(env, VHDFS_CACHE_SIZE="6M")
    for round_ in range(3):
        outs = [tmp_path / f"out{round_}-{n}.raw" for n in range(2)]
        runs = [subprocess.Popen([sys.executable, "-m", "vhdfs", "convert", blob, out, "--to",
                                  "raw", "--cache-dir", cache, "--force"], env=shared,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for out in outs]
        for run in runs:
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err
        for out in outs:
            assert out.read_bytes() == local.read_bytes()
        assert_whole(cache)
    blocks = [p for p in entries(cache) if p.name.startswith("b")]
    assert len(blocks) >= 3
    cut, garbage, flipped = blocks[:3]
    cut.write_bytes(cut.read_bytes()[:1000])
    garbage.write_bytes(os.urandom(BLOCK + 53))
    raw = bytearray(flipped.read_bytes())
    raw[100] ^= 0x10
    flipped.write_bytes(bytes(raw))
    proxy.clear()
    out = tmp_path / "after.raw"
    vhdfs("convert", blob, out, "--to", "raw", "--cache-dir", cache,
          env=through(shared, proxy))
    assert out.read_bytes() == local.read_bytes()
    fetched = [s for s in proxy.requests() if s.method == "GET" and "x-ms-range" in s.headers]
    assert fetched  # the damaged blocks came from the blob again ...
    assert_whole(cache)  # ... and went back into the cache whole


def test_the_cache_holds_no_secret(env: dict, azurite: Azurite, container: str,
                                   tmp_path: Path) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    _, child = make_chain(tmp_path)
    vhdfs("upload", child, f"az://{container}/secret-name.vhd", env=env)
    sas = generate_blob_sas(ACCOUNT, container, "secret-name.vhd", account_key=KEY,
                            permission=BlobSasPermissions(read=True),
                            expiry=datetime.now(UTC) + timedelta(hours=1))
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    url = f"{azurite.endpoint}/{container}/secret-name.vhd?{sas}"
    bare = {k: v for k, v in env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    cache = tmp_path / "cache"
    vhdfs("convert", url, tmp_path / "out.raw", "--to", "raw", "--cache-dir", cache, env=bare)
    assert entries(cache)
    for path in cache.rglob("*"):
        name = str(path.relative_to(cache))
        for secret in (signature, sas, "secret-name", container, KEY):
            assert secret not in name, name
        if path.is_file():
            content = path.read_bytes()
            for secret in (signature, sas, KEY):
                assert secret.encode() not in content, path
        assert path.stat().st_mode & 0o077 == 0, path  # the disk's bytes: the user's alone


def test_the_cache_is_off_by_default_and_refuses_what_it_cannot_use(
        env: dict, container: str, tmp_path: Path) -> None:
    _, child = make_chain(tmp_path)
    blob = f"az://{container}/disk.vhd"
    vhdfs("upload", child, blob, env=env)
    vhdfs("info", blob, env=dict(env, HOME=str(tmp_path)))
    assert not any(tmp_path.rglob(FORMAT_FOLDER))
    not_a_folder = tmp_path / "file"
    not_a_folder.write_bytes(b"x")
    done = vhdfs("info", blob, "--cache-dir", not_a_folder, env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"vhdfs: error: --cache-dir {not_a_folder}: cannot use it")
    assert len(done.stderr.splitlines()) == 1
    done = vhdfs("info", blob, env=dict(env, VHDFS_CACHE_DIR=str(tmp_path / "c"),
                                        VHDFS_CACHE_SIZE="lots"), check=False)
    assert done.returncode == 2 and "VHDFS_CACHE_SIZE 'lots' is not a size" in done.stderr


# ---------------------------------------------------------------------------- the pieces
LOCATION = parse_blob_url("https://acct.blob.core.windows.net/disks/base.vhd")


def test_a_damaged_or_misplaced_entry_is_ignored_and_removed(tmp_path: Path) -> None:
    folder = CacheFolder(tmp_path, 64 * MiB, "--cache-dir ")
    store = folder.store(LOCATION, '"0x1"')
    data = os.urandom(BLOCK)
    store.put(7, data)
    assert store.get(7) == data
    path = store.folder / f"b{7:012x}"
    good = path.read_bytes()
    other = folder.store(parse_blob_url("https://acct.blob.core.windows.net/disks/other.vhd"),
                         '"0x1"')
    for damaged in (good[:-1], good + b"\0", good[:60] + bytes([good[60] ^ 1]) + good[61:],
                    b"", os.urandom(len(good))):
        path.write_bytes(damaged)
        assert store.get(7) is None
        assert not path.exists()
    other.put(7, data)  # whole, but another blob's: copied here it is refused
    path.write_bytes((other.folder / f"b{7:012x}").read_bytes())
    assert store.get(7) is None
    store.put(8, data)
    os.rename(store.folder / f"b{8:012x}", path)  # ours, but another block's
    assert store.get(7) is None
    store.put_ranges(0, [(0, 512), (4096, 1 << 30)])
    assert store.get_ranges(0) == [(0, 512), (4096, 1 << 30)]


def test_trimming_removes_the_least_recently_used_first(tmp_path: Path) -> None:
    limit = 4 * MiB
    folder = CacheFolder(tmp_path, 64 * MiB, "--cache-dir ")
    store = folder.store(LOCATION, '"0x1"')
    for index in range(24):  # 6 MiB: more than the bound below
        store.put(index, bytes([index]) * BLOCK)
        os.utime(store.folder / f"b{index:012x}", (time.time(), 1000 + index))
    store.get(0)  # used again: newest
    folder.limit = limit
    folder.trim()
    kept = sorted(int(p.name[1:], 16) for p in store.folder.iterdir())
    total = sum(p.stat().st_size for p in store.folder.iterdir())
    assert total <= limit * 7 // 8
    assert 0 in kept and kept == [0] + list(range(24 - len(kept) + 1, 24))


def test_another_etag_of_the_blob_drops_the_old_entries(tmp_path: Path) -> None:
    folder = CacheFolder(tmp_path, 64 * MiB, "--cache-dir ")
    old = folder.store(LOCATION, '"0x1"')
    old.put(0, bytes(BLOCK))
    new = folder.store(LOCATION, '"0x2"')
    assert not old.folder.exists() and new.folder.exists()
    assert new.get(0) is None


def test_a_cache_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    """The checksum finds damage, not forgery: a folder another user could write entries into
    (made beforehand in a shared place, opened to others, or a link to elsewhere) is refused."""
    from vhdfs.errors import UsageError

    shared = tmp_path / "shared"
    (shared / FORMAT_FOLDER).mkdir(parents=True)
    os.chmod(shared / FORMAT_FOLDER, 0o777)
    with pytest.raises(UsageError, match="not a folder of yours that only you can write"):
        CacheFolder(shared, 64 * MiB, "--cache-dir ").store(LOCATION, '"0x1"')
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / FORMAT_FOLDER).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(UsageError, match="not a folder of yours"):
        CacheFolder(linked, 64 * MiB, "--cache-dir ").store(LOCATION, '"0x1"')
    os.chmod(shared / FORMAT_FOLDER, 0o700)
    CacheFolder(shared, 64 * MiB, "--cache-dir ").store(LOCATION, '"0x1"').put(0, b"x")


class GatedStore:
    """A cache folder as slow as a disk can be: every put waits until the gate opens."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.blocks: dict[int, bytes] = {}

    def get(self, index: int) -> bytes | None:
        return self.blocks.get(index)

    def put(self, index: int, data: bytes) -> None:
        assert self.gate.wait(30)
        self.blocks[index] = data


def gated_cache(content: bytes, fetched: list[int], store: GatedStore) -> RangeCache:
    block = 4096

    def fetch(offset: int, length: int) -> bytes:
        fetched.extend(range(offset // block, -(-(offset + length) // block)))
        return content[offset:offset + length]

    return RangeCache("blob", len(content), fetch, store=store, block=block,
                      capacity=64 * block, max_get=4 * block, read_ahead_max=8 * block, workers=3)


def test_a_reader_does_not_wait_for_the_cache_folder() -> None:
    """A read that fetched its block returns before the block is written to the cache folder;
    what was fetched is all there once the blob is closed."""
    content = random.Random(8).randbytes(16 * 4096)
    fetched: list[int] = []
    store = GatedStore()
    cache = gated_cache(content, fetched, store)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(cache.read(5000, 100)))
    reader.start()
    reader.join(10)
    assert got == [content[5000:5100]]  # back while the cache folder has not written a byte
    assert store.blocks == {}
    store.gate.set()
    cache.close()
    assert sorted(store.blocks) == sorted(set(fetched)) == [1]
    assert store.blocks[1] == content[4096:8192]


def test_blocks_waiting_for_the_cache_folder_are_bounded() -> None:
    """While the cache folder cannot keep up, fetching stops at a bound instead of holding the
    whole blob in memory; once it writes again, the reader gets every byte and the folder
    every block."""
    blocks = 256
    content = random.Random(9).randbytes(blocks * 4096)
    fetched: list[int] = []
    store = GatedStore()
    cache = gated_cache(content, fetched, store)
    out = bytearray()

    def read_all() -> None:
        for offset in range(0, len(content), 8192):
            out.extend(cache.read(offset, 8192))

    reader = threading.Thread(target=read_all)
    reader.start()
    time.sleep(1.0)
    # 8 blocks waiting to be written, and 4 blocks in the hands of each of the 5 fetch
    # threads and of the reader: far below the blob's 256.
    assert len(fetched) <= 8 + 6 * 4
    store.gate.set()
    reader.join(30)
    assert bytes(out) == content
    cache.close()
    assert sorted(store.blocks) == list(range(blocks))


def test_blocks_fetched_while_the_interpreter_exits_are_written_in_place() -> None:
    """At interpreter exit no pool takes new work: a fetch then writes its blocks itself
    instead of failing (or leaving the next fetch waiting for room forever)."""
    content = random.Random(10).randbytes(16 * 4096)
    store = GatedStore()
    store.gate.set()
    cache = gated_cache(content, [], store)
    exited = ThreadPoolExecutor(1)
    exited.shutdown()  # refuses work as every pool does once the interpreter exits
    cache._writer = exited
    try:
        for offset in range(0, len(content), 4096):
            assert cache.read(offset, 4096) == content[offset:offset + 4096]
    finally:
        cache.close()
    assert sorted(store.blocks) == list(range(16))
