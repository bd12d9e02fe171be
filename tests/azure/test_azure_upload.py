"""vhdfs upload against a real Azurite: round trip, sparseness, request limits, the lease,
--overwrite, --as-is, --patch-base, Azure's disk rules, and --verify."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.azure.azurite import Azurite, FaultProxy, connection_string
from tests.azure.helpers import (
    MiB,
    flat_disk,
    hidden_style_chain,
    make_chain,
    service,
    stats_of,
    vhdfs,
    write_layer,
)
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.footer import Footer
from vhdfs.vhd.layer import Layer

FOOTER = 512


def blob_bytes(azurite: Azurite, container: str, name: str) -> bytes:
    return service(azurite.endpoint).get_blob_client(container, name).download_blob().readall()


def page_ranges(azurite: Azurite, container: str, name: str) -> list[tuple[int, int]]:
    client = service(azurite.endpoint).get_blob_client(container, name)
    return [(r.start, r.end + 1) for r in client.list_page_ranges()]


def metadata(azurite: Azurite, container: str, name: str) -> dict[str, str]:
    client = service(azurite.endpoint).get_blob_client(container, name)
    return client.get_blob_properties().metadata


def same_disk_apart_from_identity(blob: bytes, fixed: bytes) -> None:
    """Equal data; footers equal but for unique id, timestamp and checksum (the upload keeps
    the top layer's id and time so a child can be checked against the blob; convert makes
    a new disk with a new id)."""
    assert len(blob) == len(fixed)
    assert blob[:-FOOTER] == fixed[:-FOOTER]
    ours, theirs = Footer.parse(blob[-FOOTER:], "blob", 0), Footer.parse(fixed[-FOOTER:], "f", 0)
    assert ours.copy(unique_id=b"", timestamp=0, checksum=0) == \
        theirs.copy(unique_id=b"", timestamp=0, checksum=0)


def test_round_trip_sends_only_data(tmp_path: Path, env: dict, azurite: Azurite, container: str,
                                    proxy: FaultProxy) -> None:
    base, child = make_chain(tmp_path)
    # Through the proxy, which records every request as Azurite received it.
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = vhdfs("upload", child, f"az://{container}/disk.vhd", "--verify", "--stats", env=up_env)
    assert "verified" in done.stdout

    blob = blob_bytes(azurite, container, "disk.vhd")
    fixed = flat_disk(child, tmp_path / "flat.vhd", env)
    same_disk_apart_from_identity(blob, fixed)
    with open(child, "rb") as handle:  # the blob's footer carries the child's identity
        handle.seek(-FOOTER, 2)
        top = Footer.parse(handle.read(FOOTER), "child", 0)
    assert Footer.parse(blob[-FOOTER:], "blob", 0).unique_id == top.unique_id

    # Page ranges: only pages with a non-zero byte (a sector of data alone in its block
    # goes up as one page), and every non-zero sector is covered.
    ranges = page_ranges(azurite, container, "disk.vhd")
    disk = len(blob) - FOOTER
    assert ranges[-1][1] == len(blob)  # the footer
    for lo, hi in ranges:
        for page in range(lo, min(hi, disk), 512):
            assert blob[page:page + 512].count(0) < 512, f"a zero page sent at {page}"
    covered = bytearray(len(blob))
    for lo, hi in ranges:
        covered[lo:hi] = b"\1" * (hi - lo)
    for sector in range(0, disk, 512):
        if blob[sector:sector + 512].count(0) < 512:
            assert covered[sector], f"data at {sector} not in the page ranges"
    data_held = sum(hi - lo for lo, hi in ranges)

    writes = [s for s in proxy.requests() if s.method == "PUT" and "comp=page" in s.path]
    assert writes and all(w.body <= 4 * MiB for w in writes)
    # 10 MiB of contiguous data at 1 MiB (the child's 64 KiB of zeros at 4 MiB cut out):
    # writes end at 4 MiB boundaries, so the largest is [4 MiB + 64 KiB, 8 MiB).
    assert max(w.body for w in writes) == 4 * MiB - 64 * 1024
    assert all("content-md5" in w.headers for w in writes)
    for w in writes:
        first, last = map(int, w.headers["x-ms-range"].split("=")[1].split("-"))
        assert first % 512 == 0 and (last + 1) % 512 == 0
    assert sum(w.body for w in writes) == data_held
    stats = stats_of(done.stderr)
    assert stats["bytes_sent"] == data_held
    assert stats["largest_request_body"] == 4 * MiB - 64 * 1024

    meta = metadata(azurite, container, "disk.vhd")
    assert meta["vhdfs_state"] == "complete"
    assert meta["vhdfs_source"] == "child.vhd"
    assert meta["vhdfs_source_size"] == str(child.stat().st_size)
    assert meta["vhdfs_digest"] in done.stdout
    # The completion mark is the last request that changes the blob.
    changes = [s for s in proxy.requests() if s.method == "PUT" and "comp=lease" not in s.path]
    assert "comp=metadata" in changes[-1].path


def test_existing_blob_needs_overwrite(tmp_path: Path, env: dict, azurite: Azurite,
                                       container: str) -> None:
    _, child = make_chain(tmp_path)
    dest = f"az://{container}/disk.vhd"
    vhdfs("upload", child, dest, env=env)
    first = metadata(azurite, container, "disk.vhd")
    refused = vhdfs("upload", child, dest, env=env, check=False)
    assert refused.returncode == 6
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert metadata(azurite, container, "disk.vhd") == first
    # A block blob in the way is replaced too.
    service(azurite.endpoint).get_blob_client(container, "disk.vhd").upload_blob(
        b"not a disk", overwrite=True)
    vhdfs("upload", child, dest, "--overwrite", env=env)
    assert blob_bytes(azurite, container, "disk.vhd")[:-FOOTER] == \
        flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]


def test_azure_disk_rules_before_any_byte(tmp_path: Path, env: dict, azurite: Azurite,
                                          container: str, proxy: FaultProxy) -> None:
    odd = tmp_path / "odd.vhd"
    create_dynamic(odd, 64 * MiB + 512)
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = vhdfs("upload", odd, f"az://{container}/odd.vhd", env=up_env, check=False)
    assert done.returncode == 2
    assert "not a whole number of MiB" in done.stderr and "65 MiB" in done.stderr
    assert f"resize it with: vhdfs resize {odd} {65 * MiB}" in done.stderr  # the fix, spelled out
    small = tmp_path / "small.vhd"
    create_dynamic(small, 16 * MiB)
    done = vhdfs("upload", small, f"az://{container}/small.vhd", env=up_env, check=False)
    assert done.returncode == 2 and "below Azure's upload minimum of 20 MiB" in done.stderr
    assert proxy.requests() == []  # nothing was sent at all
    # --as-is stores the file as it is: any whole number of pages will do.
    vhdfs("upload", odd, f"az://{container}/odd.vhd", "--as-is", env=env)
    assert blob_bytes(azurite, container, "odd.vhd") == odd.read_bytes()


def test_as_is_keeps_the_file_and_links_its_parent(tmp_path: Path, env: dict, azurite: Azurite,
                                                   container: str) -> None:
    base, child = make_chain(tmp_path)
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)
    done = vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", "--verify", env=env)
    assert blob_bytes(azurite, container, "child.vhd") == child.read_bytes()
    assert "parent linked" in done.stderr
    meta = metadata(azurite, container, "child.vhd")
    assert meta["vhdfs_parent"] == f"{container}/base.vhd"
    info = vhdfs("info", f"az://{container}/child.vhd", env=env)
    assert "by blob link" in info.stdout
    # The remote chain reads as the local one.
    remote, local = tmp_path / "remote.raw", tmp_path / "local.raw"
    vhdfs("convert", f"az://{container}/child.vhd", remote, "--to", "raw", env=env)
    vhdfs("convert", child, local, "--to", "raw", env=env)
    assert remote.read_bytes() == local.read_bytes()


def test_patch_base_equals_flattened_chain(tmp_path: Path, env: dict, azurite: Azurite,
                                           container: str, proxy: FaultProxy) -> None:
    base, child = make_chain(tmp_path)
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)
    vhdfs("upload", child, f"az://{container}/flat.vhd", env=env)
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = vhdfs("upload", child, f"az://{container}/patched.vhd", "--verify", "--patch-base",
                 f"az://{container}/base.vhd", "--stats", env=up_env)
    assert "verified" in done.stdout
    # Byte for byte the plain upload of the chain (footer included: same identity rule).
    assert blob_bytes(azurite, container, "patched.vhd") == \
        blob_bytes(azurite, container, "flat.vhd")
    copies = [s for s in proxy.requests() if "x-ms-copy-source" in s.headers]
    assert len(copies) == 1 and copies[0].headers["x-ms-copy-source"].endswith("/base.vhd")
    sent = sum(s.body for s in proxy.requests() if "comp=page" in s.path)
    assert sent <= 3 * MiB + 2048 + FOOTER  # the child's data only, not the base's 10 MiB
    assert any(s.headers.get("x-ms-page-write") == "clear" for s in proxy.requests())

    # A grandchild over a base blob: both child layers go up, the base does not. (A fresh
    # base blob: Azurite 3.35's Copy Blob shares the copy's page list with its source, so the
    # writes above also changed base.vhd there; Azure's copies are independent.)
    grandchild = tmp_path / "grandchild.vhd"
    with Layer(LocalFile(child)) as layer:
        create_differencing(grandchild, parent_info_of(child, layer))
    write_layer(grandchild, [(5 * MiB, b"\x07" * 8192)])
    vhdfs("upload", base, f"az://{container}/base2.vhd", env=env)
    vhdfs("upload", grandchild, f"az://{container}/flat2.vhd", env=env)
    vhdfs("upload", grandchild, f"az://{container}/patched2.vhd", "--patch-base",
          f"az://{container}/base2.vhd", env=env)
    assert blob_bytes(azurite, container, "patched2.vhd") == \
        blob_bytes(azurite, container, "flat2.vhd")

    # A base that is not the child's parent is refused before anything is written.
    other = tmp_path / "other"
    other.mkdir()
    other_base, _ = make_chain(other, seed=7)
    vhdfs("upload", other_base, f"az://{container}/other.vhd", env=env)
    wrong = vhdfs("upload", child, f"az://{container}/bad.vhd", "--patch-base",
                  f"az://{container}/other.vhd", env=env, check=False)
    assert wrong.returncode == 4 and "expects parent id" in wrong.stderr
    names = [b.name for b in service(azurite.endpoint).get_container_client(container).list_blobs()]
    assert "bad.vhd" not in names


def test_second_uploader_fails_on_the_lease(tmp_path: Path, env: dict, azurite: Azurite,
                                            container: str, proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    dest = f"az://{container}/disk.vhd"
    proxy.add("delay", -1, method="PUT", contains="comp=page", seconds=0.4)
    slow_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    first = subprocess.Popen([sys.executable, "-m", "vhdfs", "upload", child, dest,
                              "--concurrency", "1"], env=slow_env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any("comp=page" in s.path for s in proxy.requests()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = vhdfs("upload", child, dest, "--overwrite", env=env, check=False)
        assert second.returncode == 8
        assert "another upload holds the lease" in second.stderr
        assert first.poll() is None  # the first one is still at work, undisturbed
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert metadata(azurite, container, "disk.vhd")["vhdfs_state"] == "complete"
    assert blob_bytes(azurite, container, "disk.vhd")[:-FOOTER] == \
        flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]


@pytest.mark.parametrize("corrupt", ["data", "stray"])
def test_verify_detects_a_bad_blob(tmp_path: Path, env: dict, azurite: Azurite, container: str,
                                   corrupt: str) -> None:
    """--verify compares what it reads back: change the blob behind --resume's back and
    re-verify (the 'already complete' path reads and compares everything again)."""
    _, child = make_chain(tmp_path)
    dest = f"az://{container}/disk.vhd"
    vhdfs("upload", child, dest, env=env)
    client = service(azurite.endpoint).get_blob_client(container, "disk.vhd")
    offset = 1 * MiB + 4096 if corrupt == "data" else 60 * MiB
    client.upload_page(b"\xee" * 512, offset=offset, length=512)
    done = vhdfs("upload", child, dest, "--resume", "--verify", env=env, check=False)
    assert done.returncode == 8
    assert "verification failed" in done.stderr
    assert ("read back differ" if corrupt == "data" else "did not write") in done.stderr


def test_any_file_streams_with_zero_detection(tmp_path: Path, env: dict, azurite: Azurite,
                                              container: str) -> None:
    """SOURCE may be a file of a vhdfs mount (disk.vhd: the flat chain as a fixed VHD): it is
    read as a stream, and only its non-zero pages are sent."""
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    _, child = make_chain(tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    vhdfs("mount", child, mountpoint, env=env)
    try:
        done = vhdfs("upload", mountpoint / "disk.vhd", f"az://{container}/disk.vhd", "--stats",
                     env=env)
    finally:
        if vhdfs("umount", mountpoint, env=env, check=False).returncode:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    blob = blob_bytes(azurite, container, "disk.vhd")
    same_disk_apart_from_identity(blob, flat_disk(child, tmp_path / "flat.vhd", env))
    data_held = sum(hi - lo for lo, hi in page_ranges(azurite, container, "disk.vhd"))
    assert stats_of(done.stderr)["bytes_sent"] == data_held < 15 * MiB


def test_writes_go_in_parallel_with_progress(tmp_path: Path, env: dict, azurite: Azurite,
                                             container: str, proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    proxy.add("delay", -1, method="PUT", contains="comp=page", seconds=0.3)
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = vhdfs("upload", child, f"az://{container}/disk.vhd", "--concurrency", "3",
                 env=up_env)
    # How many at once depends on which answers come first (writes of 1 KiB to 4 MiB): the
    # two tests below check the rule with writes of one size.
    assert proxy.most_writes_at_once >= 3
    # Without a terminal, progress is a line at each quarter: done, sent, skipped and the rate.
    last = [x for x in done.stderr.splitlines() if x.startswith(f"upload az://{container}")][-1]
    assert ": 100% (64.00 MiB of 64.00 MiB; sent 12.94 MiB, skipped 51.06 MiB; " in last
    assert last.endswith("/s)")
    # The summary: 10 MiB less the child's 64 KiB of zeros, 3 MiB, 6 sectors, the footer.
    assert "sent 12.94 MiB in " in done.stdout


def test_full_size_writes_go_concurrency_at_a_time(tmp_path: Path, env: dict, azurite: Azurite,
                                                   container: str, proxy: FaultProxy) -> None:
    """--concurrency N: N writes of 4 MiB in flight, never more (they are what takes memory
    and bandwidth), as any write over 64 KiB."""
    disk = tmp_path / "full.vhd"
    create_dynamic(disk, 32 * MiB)
    write_layer(disk, [(0, random.Random(3).randbytes(24 * MiB))])  # six writes of 4 MiB
    proxy.add("delay", -1, method="PUT", contains="comp=page", seconds=0.3)
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    vhdfs("upload", disk, f"az://{container}/full.vhd", "--concurrency", "3", env=up_env)
    assert proxy.most_writes_at_once == 3
    assert sorted({s.body for s in proxy.requests() if "comp=page" in s.path}) == \
        [FOOTER, 4 * MiB]


def test_small_writes_go_four_times_concurrency_at_a_time(
        tmp_path: Path, env: dict, azurite: Azurite, container: str, proxy: FaultProxy) -> None:
    """A fragmented disk (746 writes of a few sectors) is bound by round trips, not bytes:
    --concurrency N lets 4 x N writes of at most 64 KiB be in flight at once."""
    top = hidden_style_chain(tmp_path)
    proxy.add("delay", 8, method="PUT", contains="comp=page", seconds=1.0)  # the first 8 wait
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    done = vhdfs("upload", top, f"az://{container}/small.vhd", "--concurrency", "2", "--stats",
                 env=up_env)
    assert proxy.most_writes_at_once == 8
    writes = [s for s in proxy.requests() if "comp=page" in s.path]
    assert len(writes) > 700 and max(s.body for s in writes) < 64 * 1024
    assert stats_of(done.stderr)["bytes_sent"] == sum(s.body for s in writes)


def test_a_blob_changed_while_read_fails_clearly(env: dict, azurite: Azurite, container: str,
                                                 tmp_path: Path) -> None:
    from vhdfs.azure.blob import open_blob_spec
    from vhdfs.errors import RemoteError

    _, child = make_chain(tmp_path)
    vhdfs("upload", child, f"az://{container}/disk.vhd", env=env)
    source = open_blob_spec(f"az://{container}/disk.vhd")
    try:
        assert source.remote and source.read_at(1 * MiB, 512) == \
            flat_disk(child, tmp_path / "flat.vhd", env)[1 * MiB:1 * MiB + 512]
        service(azurite.endpoint).get_blob_client(container, "disk.vhd").upload_page(
            b"\x01" * 512, offset=20 * MiB, length=512)
        with pytest.raises(RemoteError, match="the blob changed while reading"):
            source.read_at(30 * MiB, 512)
    finally:
        source.close()


class GatedClient:
    """A page blob client for the sender alone: it holds each write until the test lets
    writes go, and records what was in flight whenever one started."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.in_flight: list[int] = []
        self.seen: list[list[int]] = []  # lengths in flight, as each write started
        self.let_go = 0

    def upload_page(self, data: bytes, *, offset: int, length: int, lease: object,
                    validate_content: bool) -> None:
        with self.changed:
            self.in_flight.append(length)
            self.seen.append(list(self.in_flight))
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.let_go > 0)
            self.let_go -= 1
            self.in_flight.remove(length)


def test_sender_keeps_its_slots() -> None:
    """The rule behind the two tests above, exactly: --concurrency slots, a write of at most
    64 KiB takes a quarter of one, any larger write a whole one."""
    from vhdfs.upload.planning import data_write
    from vhdfs.upload.sender import Sender

    client = GatedClient()
    sender = Sender(client, None, "gated", (), 2, [])  # 2 slots: 8 quarters
    sizes = [4096] * 10 + [64 * 1024, 256 * 1024, 256 * 1024, 4 * MiB] + [512] * 5
    writes, at = [], 0
    for size in sizes:
        writes.append(data_write(at, bytes([1]) * size))
        at += size
    submitting = threading.Thread(target=lambda: [sender.submit(w) for w in writes])
    submitting.start()
    with client.changed:  # eight small writes go at once, and no more
        assert client.changed.wait_for(lambda: len(client.in_flight) == 8, timeout=60)
    with client.changed:
        client.let_go = len(sizes)
        client.changed.notify_all()
    submitting.join(60)
    sender.drain()
    sender.finish()
    assert sender.writes == len(sizes) and sender.sent == sum(sizes)
    assert max(len(now) for now in client.seen) == 8 == sender.most_at_once
    assert all(sum(1 if n <= 64 * 1024 else 4 for n in now) <= 8 for now in client.seen)
    assert sorted(now[-1] for now in client.seen) == sorted(sizes)
