"""Writable mounts: writes land in the top layer only, fsync and kill -9, failing writes."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from tests.fuse.conftest import (
    SECTOR,
    KiB,
    MiB,
    flat_reference,
    force_unmount,
    make_chain,
    sha256,
    vhdfs,
)
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.errors import VhdfsError
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer


def test_writes_land_in_the_top_layer_only(tmp_path, mount):
    paths = make_chain(tmp_path / "chain", 3)
    top = paths[-1]
    parents = {path: sha256(path) for path in paths[:-1]}
    model = bytearray(flat_reference(top, tmp_path / "before.raw"))
    rng = random.Random(11)
    mounted = mount(top, "--rw")
    fd = os.open(mounted.file(), os.O_RDWR)
    try:
        for _ in range(60):
            length = rng.choice([1, 100, 511, 512, 4096, 70_000, 300_000])  # any alignment
            offset = rng.randrange(len(model) - length)
            data = rng.randbytes(length)
            assert os.pwrite(fd, data, offset) == length
            model[offset:offset + length] = data
        os.fsync(fd)
        assert os.pread(fd, len(model), 0) == model  # reads see the writes at once
    finally:
        os.close(fd)
    assert mounted.stop() == 0, mounted.stderr
    assert {path: sha256(path) for path in paths[:-1]} == parents, "a parent changed"
    assert flat_reference(top, tmp_path / "after.raw") == model


def _writer(path, slots, rng, state, stop):
    """Writes of 4-64 KiB, each in its own 64 KiB slot until the next fsync (so writes that
    were not yet acknowledged never overlap each other); fsync every 8 writes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        while not stop.is_set():
            free = [s for s in range(slots) if s not in state["pending_slots"]]
            slot = rng.choice(free)
            length = rng.randrange(8, 129) * SECTOR
            offset = slot * 64 * KiB + rng.randrange(0, 64 * KiB - length + 1, SECTOR)
            data = rng.randbytes(length)
            state["pending"].append((offset, data))
            state["pending_slots"].add(slot)
            os.pwrite(fd, data, offset)
            if len(state["pending"]) == 8:
                os.fsync(fd)
                for done_offset, done_data in state["pending"]:
                    state["synced"][done_offset:done_offset + len(done_data)] = done_data
                state["pending"].clear()
                state["pending_slots"].clear()
                state["fsyncs"] += 1
    except OSError as exc:
        state["error"] = exc.errno
    finally:
        with contextlib.suppress(OSError):  # the daemon is gone
            os.close(fd)


def test_kill_9_during_writes_keeps_every_fsynced_write(tmp_path, mount):
    paths = make_chain(tmp_path / "chain", 2)
    top = paths[-1]
    base_sum = sha256(paths[0])
    before = flat_reference(top, tmp_path / "before.raw")
    mounted = mount(top, "--rw")
    state = {"synced": bytearray(before), "pending": [], "pending_slots": set(), "fsyncs": 0,
             "error": None}
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(mounted.file(), len(before) // (64 * KiB),
                                                    random.Random(5), state, stop))
    writer.start()
    deadline = time.monotonic() + 30
    while state["fsyncs"] < 12 and time.monotonic() < deadline and writer.is_alive():
        time.sleep(0.01)
    os.kill(mounted.pid, signal.SIGKILL)  # in the middle of the stream
    mounted.proc.wait(30)
    stop.set()
    writer.join(30)
    force_unmount(mounted.mountpoint)
    assert state["fsyncs"] >= 12, state["error"]
    assert state["error"] in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO), state["error"]

    assert sha256(paths[0]) == base_sum
    with open_chain(str(top), writable=True) as chain:  # opens, even for writing
        after = chain.read(0, chain.size)
    synced = state["synced"]
    in_flight = {}
    for offset, data in state["pending"]:
        in_flight.update({offset + i: data[i:i + SECTOR] for i in range(0, len(data), SECTOR)})
    for sector in range(0, len(after), SECTOR):
        got = after[sector:sector + SECTOR]
        if got == synced[sector:sector + SECTOR]:
            continue  # acknowledged data, or parent data where nothing was written
        assert got == in_flight.get(sector), (
            f"sector at {sector} is neither the fsynced data nor a write in flight "
            f"({'zeros' if got == bytes(SECTOR) else 'other bytes'})")


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs: room for the top layer's metadata and about three blocks."""
    point = tmp_path / "tiny"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    yield point
    force_unmount(point)
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_failing_write_returns_its_errno_and_damages_nothing(tmp_path, mount, tiny_filesystem):
    base = tmp_path / "base.vhd"
    create_dynamic(base, 8 * MiB, 256 * KiB)
    with Layer(LocalFile(base, writable=True), writable=True) as layer:
        layer.write(0, random.Random(1).randbytes(8 * MiB))
    base_sum = sha256(base)
    top = tiny_filesystem / "child.vhd"
    with Layer(LocalFile(base)) as layer:
        create_differencing(top, parent_info_of(base, layer))
    mounted = mount(top, "--rw", "--parent", str(base))
    model = bytearray(mounted.file().read_bytes())
    rng = random.Random(2)
    written = 0
    fd = os.open(mounted.file(), os.O_RDWR)
    try:
        failure = None
        for block in range(32):  # whole new blocks until the little file system is full
            data = rng.randbytes(256 * KiB)
            try:
                os.pwrite(fd, data, block * 256 * KiB)
            except OSError as exc:
                failure = exc
                break
            model[block * 256 * KiB:(block + 1) * 256 * KiB] = data
            written += 1
        assert failure is not None and failure.errno == errno.ENOSPC, failure
        assert written >= 1
        os.fsync(fd)  # what was acknowledged can still be made durable
        assert os.pread(fd, len(model), 0) == model  # the failed block still shows the parent
        # The mount keeps serving, and rewriting an allocated block still works.
        again = rng.randbytes(4096)
        os.pwrite(fd, again, 8192)
        model[8192:8192 + 4096] = again
    finally:
        os.close(fd)
    assert mounted.stop() == 0, mounted.stderr
    assert "ENOSPC" in mounted.stderr  # logged
    assert sha256(base) == base_sum
    with open_chain(str(top), OpenOptions(parents=[str(base)])) as chain:
        assert chain.read(0, chain.size) == model
    vhdfs("info", top, "--parent", base)


def test_periodic_flush_bounds_what_a_kill_loses(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 2)[-1]
    mounted = mount(top, "--rw", "--flush-interval", "0.2")
    payload = os.urandom(100 * KiB)
    fd = os.open(mounted.file(), os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 3 * MiB + 512)  # and no fsync
    finally:
        os.close(fd)
    deadline = time.monotonic() + 20
    on_disk = False
    while not on_disk and time.monotonic() < deadline:
        time.sleep(0.1)
        # What a kill would leave: read under the live writer, so force-shared.
        with contextlib.suppress(VhdfsError), \
                open_chain(str(top), OpenOptions(force_share=True)) as chain:
            on_disk = chain.read(3 * MiB + 512, len(payload)) == payload
    assert on_disk, "the daemon never flushed the write on its own"
    os.kill(mounted.pid, signal.SIGKILL)
    mounted.proc.wait(30)
    force_unmount(mounted.mountpoint)
    with open_chain(str(top)) as chain:
        assert chain.read(3 * MiB + 512, len(payload)) == payload
