"""Crash replay of `vhdfs mount --rw` of a checkpoint (.avhdx): the daemon's own pwrite, fsync
and ftruncate calls are logged by errorfs (a FUSE pass-through under it, as dm-log-writes
would log a device), then every state is rebuilt and checked as in test_vhdx_write_crash.py.
Flush points are the test's fsync calls (the daemon's periodic flushes only make more writes
durable, which the check allows)."""

from __future__ import annotations

import mmap
import os
import random
import shutil
from pathlib import Path

from test_vhdx_write_crash import (
    DISK,
    check_state,
    is_metadata,
    metadata_states,
    read_flat,
    scenario,
    write_stream,
)

from tests.hostile.conftest import errorfs, vhdfs_mount
from tests.hostile.errorfs import read_log
from tests.hostile.test_hostile_crash import SECTOR, Event, Model, crash_states, rebuild
from vhdfs.resolve import open_chain


def mount_stream(rng: random.Random) -> list[tuple[str, int, int]]:
    """write_stream's operations, large writes moved to a 4 KiB boundary. The mount serves
    disk.raw with direct_io: the kernel passes the caller's buffer on in requests of at most
    1 MiB, split where the buffer's pages fall, so a write larger than that at an unaligned
    offset (or from an unaligned buffer) reaches the daemon as requests that share a sector;
    a crash between them leaves that sector half new, whatever the image format (small
    unaligned writes, one request each, stay)."""
    ops = write_stream(rng, 30, DISK)
    return [(kind, offset - offset % 4096 if length > 64 * 1024 else offset, length)
            for kind, offset, length in ops]


def test_writes_through_a_rw_mount_of_a_checkpoint_survive_a_crash(tmp_path: Path) -> None:
    rng = random.Random(29)
    backing = tmp_path / "backing"
    backing.mkdir()
    image, (base,) = scenario(backing, "differencing", rng)
    initial = image.read_bytes()
    with open_chain(str(image)) as chain:
        model = Model(chain.read(0, chain.size))
    flat = bytearray(model.start)
    log_path = tmp_path / "writes.log"
    logged = errorfs(backing, tmp_path / "logged", [], log_path)
    try:
        mount = vhdfs_mount(logged.mountpoint / image.name, tmp_path / "mnt", "--rw")
        try:
            fd = os.open(mount.mountpoint / "disk.raw", os.O_RDWR)
            try:
                for kind, offset, length in mount_stream(rng):
                    if kind == "flush":
                        os.fsync(fd)
                        model.flushes.append((len(read_log(log_path)), len(model.after)))
                        continue
                    data = rng.randbytes(length)
                    aligned = mmap.mmap(-1, length)  # page aligned: requests split on pages
                    aligned.write(data)
                    assert os.pwrite(fd, aligned, offset) == length
                    aligned.close()
                    flat[offset:offset + length] = data
                    first, last = offset // SECTOR, (offset + length - 1) // SECTOR
                    model.after.append({s: bytes(flat[s * SECTOR:(s + 1) * SECTOR])
                                        for s in range(first, last + 1)})
            finally:
                os.close(fd)
        finally:
            mount.stop()
    finally:
        logged.stop()
    records = read_log(log_path)
    model.flushes.append((len(records), len(model.after)))
    assert {name for _, name, _, _ in records} == {image.name}, "only the top layer is written"
    events = [Event(kind, name, offset, data if kind == "write" else b"")
              for kind, name, offset, data in records]
    assert sum(e.kind == "sync" for e in events) >= 6
    assert any(e.kind == "truncate" for e in events)  # blocks were allocated
    states = crash_states(events, rng) + metadata_states(events, is_metadata)
    work = tmp_path / "replay" / "work"
    for state in states:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        shutil.copyfile(base, work / base.name)
        rebuild({image.name: initial}, events, state, work)
        check_state(work, image.name, model, state, qemu=False)
    # The whole log is the final image, exactly, closed clean by the unmount.
    got, warnings = read_flat(image)
    assert got == bytes(flat) and warnings == []
    assert len(states) > 40
