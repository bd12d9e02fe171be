"""Crash consistency of the VHDX write path, replayed as for VHD (tests/hostile/test_hostile_crash.py,
whose recorder, crash states and model are reused here).

Every pwrite, fsync and ftruncate of `create_vhdx*` and of a stream of writes and flushes is
recorded; the file is rebuilt at every flush point and at random subsets of the 512-byte
pieces written since (a power loss may keep any of them), and, one at a time, with and
without each metadata write (headers, log entries, BAT and bitmap sectors). Every state:
- opens through our reader (a log left by the crash replayed in memory) and reads every
  sector as its value at the last completed flush or a value written after it;
- opens writable (the log replayed into the file) and then reads the same, cleanly;
- reads the same through qemu-img after its own replay (`check -r all`), where qemu reads
  the format (512-byte sectors, no parent: qemu opens no differencing VHDX).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.hostile.test_hostile_crash import (
    SECTOR,
    Event,
    Log,
    Model,
    State,
    check_sectors,
    crash_states,
    rebuild,
)
from tests.tooling import need
from vhdfs import create as create_module
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import journal as journal_module

MiB = 1 << 20
DISK = 6 * MiB + 3 * 4096
# What a crashed state may warn about: a log to replay, a header torn while written.
EXPECTED_WARNINGS = ("not yet replayed", "fails its CRC-32C check; using header")


# ------------------------------------------------------------------ recording
class Recorder:
    """LocalFile's writes, fsyncs and truncates of one file name, as harness events."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
        self.log = Log()
        real_write_at, real_sync, real_truncate = LocalFile.write_at, LocalFile.sync, LocalFile.truncate
        events = self.log.events

        def write_at(source: LocalFile, offset: int, data: bytes) -> None:
            real_write_at(source, offset, data)
            if source.path.name in names:
                events.append(Event("write", source.path.name, offset, bytes(data)))

        def sync(source: LocalFile) -> None:
            real_sync(source)
            if source.writable and source.path.name in names:
                events.append(Event("sync", source.path.name))

        def truncate(source: LocalFile, size: int) -> None:
            real_truncate(source, size)
            if source.path.name in names:
                events.append(Event("truncate", source.path.name, size))

        monkeypatch.setattr(LocalFile, "write_at", write_at)
        monkeypatch.setattr(LocalFile, "sync", sync)
        monkeypatch.setattr(LocalFile, "truncate", truncate)


def metadata_states(events: list[Event], is_metadata) -> list[State]:
    """Per interval between flushes: each metadata write alone, and everything but it (the
    harness enumerates only writes of one sector or less one by one)."""
    states: list[State] = []
    start = 0
    for index, event in enumerate(events + [Event("sync", "")]):
        if not event.barrier:
            continue
        writes = [e for e in events[start:index] if e.kind in ("write", "truncate")]
        for one in writes:
            if one.kind != "write" or not is_metadata(one.offset):
                continue
            alone = [(one.file, one.offset, one.data)]
            others = [(e.file, e.offset, e.data) if e.kind == "write" else (e.file, e.offset, None)
                      for e in writes if e is not one]
            states.append(State(f"events {start}..: only the write at {one.offset}", start, alone))
            states.append(State(f"events {start}..: all but the write at {one.offset}", start,
                                others))
        start = index + 1
    return states


# ------------------------------------------------------------------ the checks
def read_flat(image: Path) -> tuple[bytes, list[str]]:
    with open_chain(str(image)) as chain:
        return chain.read(0, chain.size), list(chain.warnings)


def qemu_flat(image: Path, folder: Path) -> bytes:
    """qemu-img's reading of the file after its own replay of the log."""
    copy, raw = folder / "qemu-copy.vhdx", folder / "qemu.raw"
    shutil.copyfile(image, copy)
    subprocess.run(["qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(copy)],
                   capture_output=True)  # exit status 0 or "leaks fixed"; the read decides
    subprocess.run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(copy), str(raw)],
                   check=True, capture_output=True)
    return raw.read_bytes()


def check_state(work: Path, name: str, model: Model, state: State, *, qemu: bool) -> None:
    image = work / name
    got, warnings = read_flat(image)
    assert all(any(text in w for text in EXPECTED_WARNINGS) for w in warnings), \
        f"{state.label}: {warnings}"
    check_sectors(got, model, state.prefix, state.label)
    if qemu:
        assert qemu_flat(image, work.parent) == got, f"{state.label}: qemu-img reads otherwise"
    with open_chain(str(image), writable=True) as chain:  # replays into the file
        assert chain.read(0, chain.size) == got, state.label
    again, warnings = read_flat(image)
    assert again == got, state.label
    assert all("fails its CRC-32C check" in w for w in warnings), f"{state.label}: {warnings}"


# ------------------------------------------------------------------ write streams
def write_stream(rng: random.Random, count: int, size: int) -> list[tuple[str, int, int]]:
    """('write', offset, length) and ('flush', 0, 0): partial sectors, runs inside one block,
    whole blocks, across blocks, over data and over zeros or the parent's data."""
    ops: list[tuple[str, int, int]] = []
    for _ in range(count):
        if rng.random() < 0.25:
            ops.append(("flush", 0, 0))
            continue
        length = rng.choice([1, 700, 512, 4096, 3 * 4096 + 512, 70_000, MiB, MiB + 8192])
        offset = rng.choice([rng.randrange(0, size - length),
                             rng.randrange(0, size // MiB) * MiB,
                             rng.randrange(0, size // 4096 - 4) * 4096])
        ops.append(("write", offset, min(length, size - offset)))
    return ops


def run_stream(image: Path, ops: list[tuple[str, int, int]], rng: random.Random,
               recorder: Recorder) -> Model:
    with open_chain(str(image)) as chain:
        model = Model(chain.read(0, chain.size))
    flat = bytearray(model.start)
    log = recorder.log
    with open_chain(str(image), writable=True) as chain:
        for kind, offset, length in ops:
            if kind == "flush":
                chain.flush()
                model.flushes.append((len(log.events), len(model.after)))
                continue
            data = rng.randbytes(length)
            chain.write(offset, data)
            flat[offset:offset + length] = data
            first, last = offset // SECTOR, (offset + length - 1) // SECTOR
            model.after.append({s: bytes(flat[s * SECTOR:(s + 1) * SECTOR])
                                for s in range(first, last + 1)})
    model.flushes.append((len(log.events), len(model.after)))  # the close flushed
    return model


def scenario(folder: Path, kind: str, rng: random.Random) -> tuple[Path, list[Path]]:
    """The image to write into and the files beside it it needs (its parents)."""
    base = folder / "base.vhdx"
    lss = 4096 if kind == "differencing-4k" else 512
    create_vhdx(base, DISK, fixed=kind == "fixed", block_size=MiB, logical_sector_size=lss)
    with open_chain(str(base), writable=True) as chain:  # data the crash must not lose
        for offset, length in ((0, 256 * 1024), (3 * MiB + 4096, 64 * 1024), (5 * MiB, 64 * 1024)):
            chain.write(offset, rng.randbytes(length))
    if not kind.startswith("differencing"):
        return base, []
    child = folder / "child.avhdx"
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(child, base, chain.top, block_size=MiB)
    with open_chain(str(child), writable=True) as chain:
        chain.write(8192, rng.randbytes(4096))
    return child, [base]


def is_metadata(offset: int) -> bool:
    """Headers, log and the regions of the files vhdfs lays out (create: first 4 MiB), and
    the sector bitmap blocks it allocates (1 MiB blocks past the payload, so any offset
    past the data: the data writes here are not at MiB-aligned offsets past 16 MiB)."""
    return offset < 4 * MiB


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing", "differencing-4k",
                                  "differencing-split"])
def test_writes_survive_a_crash_at_any_point(tmp_path: Path, monkeypatch, kind: str) -> None:
    rng = random.Random(sum(map(ord, kind)))
    origin = tmp_path / "origin"
    origin.mkdir()
    image, beside = scenario(origin, kind, rng)
    if kind == "differencing-split":  # commits larger than the log: several entries each
        monkeypatch.setattr(journal_module, "max_entry_sectors", lambda length: 2)
    initial = image.read_bytes()
    recorder = Recorder(monkeypatch, {image.name})
    model = run_stream(image, write_stream(rng, 30, DISK), rng, recorder)
    monkeypatch.undo()
    events = recorder.log.events
    assert sum(e.kind == "sync" for e in events) >= 6
    qemu = not kind.startswith("differencing")
    if qemu:
        need("qemu-img")
    states = crash_states(events, rng) + metadata_states(events, is_metadata)
    work = tmp_path / "replay" / "work"
    for number, state in enumerate(states):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        for path in beside:
            shutil.copyfile(path, work / path.name)
        rebuild({image.name: initial}, events, state, work)
        check_state(work, image.name, model, state, qemu=qemu and (number % 3 == 0 or not state.extra))
    # The whole record is the final image exactly, closed clean.
    final = bytearray(model.start)
    for change in model.after:
        for sector, value in change.items():
            final[sector * SECTOR:(sector + 1) * SECTOR] = value
    got, warnings = read_flat(image)
    assert got == bytes(final) and warnings == []
    assert len(states) > 40


def test_create_leaves_nothing_or_a_whole_image(tmp_path: Path, monkeypatch) -> None:
    """create writes a temporary file and renames it once synced: in every state the target
    is absent (or, with --force, the old file untouched) or a complete, clean image."""
    rng = random.Random(1)
    target = tmp_path / "new.avhdx"
    base = tmp_path / "base.vhdx"
    create_vhdx(base, DISK, block_size=MiB)
    target.write_bytes(b"old contents")
    events: list[Event] = []
    real_write_at, real_truncate, real_fsync, real_replace = (
        LocalFile.write_at, LocalFile.truncate, os.fsync, os.replace)

    def write_at(source: LocalFile, offset: int, data: bytes) -> None:
        real_write_at(source, offset, data)
        events.append(Event("write", "tmp", offset, bytes(data)))

    def truncate(source: LocalFile, size: int) -> None:
        real_truncate(source, size)
        events.append(Event("truncate", "tmp", size))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.isfile(f"/proc/self/fd/{fd}"):
            events.append(Event("sync", "tmp"))

    def replace(source, destination) -> None:
        real_replace(source, destination)
        if Path(destination) == target:
            events.append(Event("journal", "rename"))  # atomic: a barrier

    monkeypatch.setattr(LocalFile, "write_at", write_at)
    monkeypatch.setattr(LocalFile, "truncate", truncate)
    monkeypatch.setattr(create_module.os, "fsync", fsync)
    monkeypatch.setattr(create_module.os, "replace", replace)
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(target, base, chain.top, force=True)
        flat = chain.read(0, DISK)
    monkeypatch.undo()
    # The order that makes it safe: the temporary file written, synced, then renamed over
    # the old one (which nothing wrote to: until the rename, a crash leaves it whole).
    kinds = [e.kind for e in events]
    assert kinds[-2:] == ["sync", "journal"] and set(kinds[:-2]) == {"write", "truncate"}
    renamed_at = len(events) - 1
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(base, work / base.name)
    for state in crash_states(events, rng):
        if state.prefix <= renamed_at:
            continue  # the target is still the old file
        rebuild({"tmp": b""}, events[:renamed_at], State(state.label, renamed_at), work)
        (work / "tmp").rename(work / target.name)
        with open_chain(str(work / target.name)) as chain:
            assert chain.warnings == [] and chain.top.describe()["log"] == "clean"
            assert chain.read(0, chain.size) == flat
    with open_chain(str(target)) as chain:
        assert chain.top.is_differencing and chain.size == DISK
        assert chain.top.locator["relative_path"] == ".\\base.vhdx"
    assert target.read_bytes()[:8] == fmt.SIGNATURE


def test_stale_bitmap_bits_never_show_through_a_split_commit(tmp_path: Path, monkeypatch) -> None:
    """Bits an earlier crash left set for a block no entry points at (its bitmap sector
    replayed, its BAT sector not) must be cleared before the block's new BAT entry can be
    applied: bitmap sectors go first, so no prefix of a split commit shows them."""
    rng = random.Random(9)
    origin = tmp_path / "origin"
    origin.mkdir()
    image, (base,) = scenario(origin, "differencing", rng)
    with open_chain(str(image)) as chain:
        layer = chain.top
        sb = layer.bat[fmt.bitmap_index(5, layer.chunk_ratio)] & fmt.OFFSET_MASK
        per_block = fmt.SECTOR_BITMAP_BLOCK // layer.chunk_ratio
        assert sb and layer.block_state(5) == fmt.PAYLOAD_BLOCK_NOT_PRESENT
    with open(image, "r+b") as f:  # what the earlier crash left: every bit of block 5 set
        f.seek(sb + 5 * per_block)
        f.write(b"\xff" * per_block)
    monkeypatch.setattr(journal_module, "max_entry_sectors", lambda length: 1)
    initial = image.read_bytes()
    recorder = Recorder(monkeypatch, {image.name})
    model = run_stream(image, [("write", 5 * MiB + 10 * SECTOR, SECTOR), ("flush", 0, 0)], rng,
                       recorder)
    monkeypatch.undo()
    events = recorder.log.events
    assert sum(e.kind == "sync" for e in events) >= 4  # two entries, each flushed and applied
    work = tmp_path / "work"
    for state in crash_states(events, rng) + metadata_states(events, is_metadata):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        shutil.copyfile(base, work / base.name)
        rebuild({image.name: initial}, events, state, work)
        check_state(work, image.name, model, state, qemu=False)
