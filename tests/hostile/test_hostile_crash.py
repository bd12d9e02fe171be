"""Crash consistency, replayed (the way dm-log-writes is used).

Every pwrite, fsync and truncate a writable chain (and `vhdfs commit`) makes is recorded by a
Source wrapper. The image is then rebuilt at every flush point (each sync: what the disk must
hold) and at random subsets of the writes since the last one, split into 512-byte pieces (a
power loss may persist any of them, in any order), and every state is checked:
- it opens without a warning, and opens writable,
- every sector reads either its value at the last completed flush or a value written after
  it, never anything else: never zeros where the parent's data belongs,
- `vhdfs check` finds nothing worse than leaked space (notes), and for commit its own
  unfinished-commit mark; a commit resumed from any state finishes with the right data.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.vhdimages import BLOCK_SIZE, KIB, MIB, make_child, make_dynamic, make_fixed, write_data
from vhdfs.maintain import commit as commit_module
from vhdfs.maintain.check import check_image
from vhdfs.maintain.findings import ERROR
from vhdfs.resolve import open_chain
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile

SECTOR = 512
DISK = 4 * MIB
SUBSETS_PER_INTERVAL = 4
# What check may report in a crashed state: leaked space, and during commit its own marks.
ALLOWED_AFTER_CRASH: set[str] = set()
COMMIT_MARKS = {"mid-commit", "footer-copy-mark"}


# ------------------------------------------------------------------ recording
@dataclass
class Event:
    kind: str  # write | sync | truncate | journal
    file: str  # file name
    offset: int = 0
    data: bytes | None = b""
    op: int = -1  # the logical operation that made it

    @property
    def barrier(self) -> bool:
        """Everything before a sync (or an atomic, synced journal replace) is on the disk. A
        truncate is not a barrier: it may reach the disk before writes that preceded it."""
        return self.kind in ("sync", "journal")


@dataclass
class Log:
    events: list[Event] = field(default_factory=list)
    op: int = -1


class RecordingSource(Source):
    """Passes everything through to `inner` and logs each write, sync and truncate."""

    def __init__(self, inner: Source, log: Log, file: str) -> None:
        self.inner, self.log, self.file = inner, log, file
        self.name, self.writable, self.remote = inner.name, inner.writable, inner.remote
        self.fd = getattr(inner, "fd", None)

    def size(self) -> int:
        return self.inner.size()

    def read_at(self, offset: int, length: int) -> bytes:
        return self.inner.read_at(offset, length)

    def write_at(self, offset: int, data: bytes) -> None:
        self.inner.write_at(offset, data)
        self.log.events.append(Event("write", self.file, offset, bytes(data), self.log.op))

    def sync(self) -> None:
        self.inner.sync()
        self.log.events.append(Event("sync", self.file, op=self.log.op))

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)
        self.log.events.append(Event("truncate", self.file, size, op=self.log.op))

    def identity(self) -> tuple:
        return self.inner.identity()

    def close(self) -> None:
        self.inner.close()


# ------------------------------------------------------------------ replay
def pieces(event: Event) -> list[tuple[int, bytes | None]]:
    """A write as the 512-byte pieces a power loss may keep or lose one by one; a truncate
    as one piece (offset = new size, data None)."""
    if event.kind == "truncate":
        return [(event.offset, None)]
    out, data = [], event.data or b""
    at = 0
    while at < len(data):
        step = SECTOR - (event.offset + at) % SECTOR
        out.append((event.offset + at, data[at:at + step]))
        at += step
    return out


def resize(content: bytearray, size: int) -> None:
    """A truncate: shorter, or longer with zeros (VHDX allocation extends the file)."""
    if size < len(content):
        del content[size:]
    else:
        content.extend(bytes(size - len(content)))


def apply_write(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset:offset + len(data)] = data


@dataclass
class State:
    label: str
    prefix: int  # events[:prefix] are all on the disk
    extra: list[tuple[str, int, bytes | None]] = field(default_factory=list)  # pieces after it


def crash_states(events: list[Event], rng: random.Random) -> list[State]:
    states = [State("start", 0)]
    barriers = [i for i, e in enumerate(events) if e.barrier]
    bounds = [0] + [b + 1 for b in barriers] + [len(events)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        if start:
            states.append(State(f"after event {start - 1} ({events[start - 1].kind})", start))
        writes = [e for e in events[start:end] if e.kind in ("write", "truncate")]
        if not writes:
            continue
        all_pieces = [(e.file, off, data) for e in writes for off, data in pieces(e)]
        for n in range(SUBSETS_PER_INTERVAL):
            chosen = [p for p in all_pieces if rng.random() < (0.5 if n else 0.15)]
            states.append(State(f"events {start}..{end - 1}: {len(chosen)} of {len(all_pieces)} "
                                "pieces", start, chosen))
        # Metadata-sized events (footers, BAT and bitmap sectors, truncates) one at a time:
        # alone, and everything but them: where a missing sync shows.
        for event in writes:
            if event.kind == "write" and len(event.data) > SECTOR:
                continue
            alone = [(event.file, off, data) for off, data in pieces(event)]
            states.append(State(f"events {start}..: only {event.kind} at {event.offset}", start, alone))
            others = [(e.file, off, data) for e in writes if e is not event for off, data in pieces(e)]
            states.append(State(f"events {start}..: all but {event.kind} at {event.offset}", start,
                                others))
        # A process crash (no reordering): a prefix of the interval's writes.
        cut = rng.randrange(len(writes) + 1)
        in_order = [(e.file, off, data) for e in writes[:cut] for off, data in pieces(e)]
        states.append(State(f"events {start}..: first {cut} writes", start, in_order))
    if len(events) not in bounds[:-1]:
        states.append(State("everything", len(events)))
    return states


def rebuild(initial: dict[str, bytes], events: list[Event], state: State, folder: Path,
            journal_name: str | None = None) -> None:
    """Write the files of `state` into `folder` (which holds the unchanged files already)."""
    files = {name: bytearray(data) for name, data in initial.items()}
    journal: bytes | None = initial.get(journal_name) if journal_name else None
    for event in events[:state.prefix]:
        if event.kind == "write":
            apply_write(files[event.file], event.offset, event.data)
        elif event.kind == "truncate":
            resize(files[event.file], event.offset)
        elif event.kind == "journal":
            journal = event.data
    for name, offset, data in state.extra:
        if data is None:
            resize(files[name], offset)
        else:
            apply_write(files[name], offset, data)
    for name, data in files.items():
        if name != journal_name:
            (folder / name).write_bytes(bytes(data))
    if journal_name:
        path = folder / journal_name
        if journal is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(journal)


# ------------------------------------------------------------------ the model
@dataclass
class Model:
    """The flat disk after each logical write, and the flushes that made writes durable."""

    start: bytes
    after: list[dict[int, bytes]] = field(default_factory=list)  # sector -> value, per write
    flushes: list[tuple[int, int]] = field(default_factory=list)  # (events at its end, writes before)

    def durable_writes(self, prefix: int) -> int:
        return max([writes for end, writes in self.flushes if end <= prefix], default=0)

    def acceptable(self, prefix: int) -> tuple[bytearray, dict[int, set[bytes]]]:
        """The flat disk at the last completed flush, and for each sector written after it
        the set of values it may also show."""
        durable = self.durable_writes(prefix)
        flat = bytearray(self.start)
        for change in self.after[:durable]:
            for sector, value in change.items():
                flat[sector * SECTOR:(sector + 1) * SECTOR] = value
        later: dict[int, set[bytes]] = {}
        for change in self.after[durable:]:
            for sector, value in change.items():
                later.setdefault(sector, set()).add(value)
        return flat, later


def check_sectors(got: bytes, model: Model, prefix: int, label: str) -> None:
    flat, later = model.acceptable(prefix)
    assert len(got) == len(flat)
    if got == bytes(flat):
        return
    for sector in range(len(flat) // SECTOR):
        value = got[sector * SECTOR:(sector + 1) * SECTOR]
        old = bytes(flat[sector * SECTOR:(sector + 1) * SECTOR])
        if value != old and value not in later.get(sector, ()):
            what = "zeros" if value == bytes(SECTOR) else "other bytes"
            raise AssertionError(f"{label}: sector {sector} reads {what}, neither its value at the "
                                 f"last flush nor one written since ({len(later.get(sector, ()))})")


def check_findings(image: Path, label: str, allowed: set[str]) -> None:
    report = check_image(str(image))
    bad = [f"{f.code}: {f.message}" for layer in report.layers for f in layer.findings
           if f.severity == ERROR and f.code not in allowed]
    assert not bad, f"{label}: check found {bad}"


# ------------------------------------------------------------------ writable chain
def base_and_child(folder: Path, fixed_base: bool) -> tuple[Path, Path]:
    if fixed_base:
        base = make_fixed(folder / "base.vhd", DISK)
        write_data(base, [(0, 256 * KIB), (3 * BLOCK_SIZE, 64 * KIB)])
    else:
        base = make_dynamic(folder / "base.vhd", DISK, writes=((0, 256 * KIB), (3 * BLOCK_SIZE, 64 * KIB)))
    child = make_child(folder / "child.vhd", base, writes=((4096, 1024),))
    return base, child


def write_stream(rng: random.Random, count: int) -> list[tuple[str, int, int]]:
    """('write', offset, length) and ('flush', 0, 0) operations: partial sectors, runs within
    one bitmap byte, whole blocks, rewrites, over parent data and over zeros."""
    ops = []
    for _ in range(count):
        if rng.random() < 0.2:
            ops.append(("flush", 0, 0))
            continue
        kind = rng.random()
        if kind < 0.3:
            length = rng.choice([1, 100, 512, 700])
            offset = rng.randrange(0, DISK - length)
        elif kind < 0.6:
            length = rng.choice([512, 1024, 1536]) * rng.randint(1, 3)
            offset = rng.randrange(0, DISK // SECTOR - 8) * SECTOR
        elif kind < 0.8:
            length = rng.choice([64 * KIB, 100 * KIB])
            offset = rng.choice([0, 3 * BLOCK_SIZE, rng.randrange(0, DISK - length)])
        else:
            length = BLOCK_SIZE
            offset = rng.randrange(DISK // BLOCK_SIZE) * BLOCK_SIZE
        ops.append(("write", offset, min(length, DISK - offset)))
    return ops


def run_stream(child: Path, ops: list[tuple[str, int, int]], rng: random.Random) -> tuple[Log, Model]:
    log = Log()
    with open_chain(str(child)) as chain:
        model = Model(chain.read(0, chain.size))
    flat = bytearray(model.start)
    with open_chain(str(child), writable=True) as chain:
        chain.top.source = RecordingSource(chain.top.source, log, child.name)
        for index, (kind, offset, length) in enumerate(ops):
            log.op = index
            if kind == "flush":
                chain.flush()
                model.flushes.append((len(log.events), len(model.after)))
                continue
            data = rng.randbytes(length)
            chain.write(offset, data)
            flat[offset:offset + length] = data
            first, last = offset // SECTOR, (offset + length - 1) // SECTOR
            model.after.append({s: bytes(flat[s * SECTOR:(s + 1) * SECTOR]) for s in range(first, last + 1)})
        log.op = len(ops)
    # Closing the chain flushed it.
    model.flushes.append((len(log.events), len(model.after)))
    return log, model


def replay_and_check(folder: Path, base: Path, child: Path, initial: bytes, log: Log, model: Model,
                     rng: random.Random, work: Path, check_every: int = 3) -> int:
    states = crash_states(log.events, rng)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    shutil.copyfile(base, work / base.name)
    for number, state in enumerate(states):
        rebuild({child.name: initial}, log.events, state, work)
        with open_chain(str(work / child.name)) as chain:  # it opens
            got = chain.read(0, chain.size)
            assert chain.warnings == [], f"{state.label}: {chain.warnings}"
        check_sectors(got, model, state.prefix, state.label)
        open_chain(str(work / child.name), writable=True).close()  # and takes writes again
        if number % check_every == 0 or not state.extra or "only" in state.label or "all but" in state.label:
            check_findings(work / child.name, state.label, ALLOWED_AFTER_CRASH)
    # The whole log is the final image, exactly.
    final = bytearray(model.start)
    for change in model.after:
        for sector, value in change.items():
            final[sector * SECTOR:(sector + 1) * SECTOR] = value
    with open_chain(str(child)) as chain:
        assert chain.read(0, chain.size) == bytes(final)
    return len(states)


@pytest.mark.parametrize("fixed_base", [False, True], ids=["dynamic-base", "fixed-base"])
def test_writes_to_a_child_survive_a_crash_at_any_point(tmp_path: Path, fixed_base: bool) -> None:
    rng = random.Random(11 + fixed_base)
    base, child = base_and_child(tmp_path, fixed_base)
    initial = child.read_bytes()
    ops = write_stream(rng, 40)
    log, model = run_stream(child, ops, rng)
    assert sum(e.kind == "sync" for e in log.events) >= 3
    states = replay_and_check(tmp_path, base, child, initial, log, model, rng, tmp_path / "replay")
    assert states > 30


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(5, 25))
def test_random_write_streams_replayed(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                       count: int) -> None:
    folder = tmp_path_factory.mktemp("stream")
    rng = random.Random(seed)
    base, child = base_and_child(folder, rng.random() < 0.3)
    initial = child.read_bytes()
    log, model = run_stream(child, write_stream(rng, count), rng)
    replay_and_check(folder, base, child, initial, log, model, rng, folder / "replay", check_every=6)


def test_the_replay_catches_lost_data(tmp_path: Path) -> None:
    """The checker itself: a state that drops a flushed write, or shows zeros where the
    parent's data is, fails."""
    rng = random.Random(3)
    base, child = base_and_child(tmp_path, False)
    child.read_bytes()
    log, model = run_stream(child, [("write", 0, 4096), ("flush", 0, 0), ("write", 8192, 512)], rng)
    flushed_at = model.flushes[0][0]
    with open_chain(str(child)) as chain:
        final = chain.read(0, chain.size)
    # Everything flushed, then the first write's sectors read as before it: not acceptable.
    broken = bytearray(final)
    broken[0:4096] = model.start[0:4096]
    with pytest.raises(AssertionError, match="sector 0"):
        check_sectors(bytes(broken), model, flushed_at, "dropped write")
    # Zeros where the parent's data belongs.
    zeroed = bytearray(final)
    zeroed[3 * BLOCK_SIZE:3 * BLOCK_SIZE + 512] = bytes(512)
    with pytest.raises(AssertionError, match="zeros"):
        check_sectors(bytes(zeroed), model, flushed_at, "zeros")
    check_sectors(final, model, len(log.events), "all")


# ------------------------------------------------------------------ commit
def test_commit_survives_a_crash_at_any_point_and_resumes(tmp_path: Path, monkeypatch) -> None:
    rng = random.Random(5)
    origin = tmp_path / "origin"
    origin.mkdir()
    base = make_dynamic(origin / "base.vhd", DISK, writes=((0, 256 * KIB), (3 * BLOCK_SIZE, 64 * KIB)))
    child = make_child(origin / "child.vhd", base, writes=((4096, 1024), (2 * BLOCK_SIZE, 70 * KIB),
                                                           (3 * BLOCK_SIZE + 512, 1536)))
    with open_chain(str(child)) as chain:
        flat = chain.read(0, chain.size)
    with open_chain(str(base)) as chain:
        parent_before = chain.read(0, chain.size)
    initial = {"base.vhd": base.read_bytes()}

    log = Log()
    real_write_journal, real_remove_journal = commit_module.write_journal, commit_module.remove_journal

    real_write_at, real_sync, real_truncate = LocalFile.write_at, LocalFile.sync, LocalFile.truncate

    def write_at(self, offset: int, data: bytes) -> None:
        real_write_at(self, offset, data)
        log.events.append(Event("write", self.path.name, offset, bytes(data)))

    def sync(self) -> None:
        real_sync(self)
        if self.writable:
            log.events.append(Event("sync", self.path.name))

    def truncate(self, size: int) -> None:
        real_truncate(self, size)
        log.events.append(Event("truncate", self.path.name, size))

    def write_journal(parent, journal, *args, **kwargs) -> None:
        real_write_journal(parent, journal, *args, **kwargs)
        log.events.append(Event("journal", "base.vhd.vhdfs-commit", data=journal.dump()))

    def remove_journal(parent, *args, **kwargs) -> None:
        real_remove_journal(parent, *args, **kwargs)
        log.events.append(Event("journal", "base.vhd.vhdfs-commit", data=None))

    monkeypatch.setattr(LocalFile, "write_at", write_at)
    monkeypatch.setattr(LocalFile, "sync", sync)
    monkeypatch.setattr(LocalFile, "truncate", truncate)
    monkeypatch.setattr(commit_module, "write_journal", write_journal)
    monkeypatch.setattr(commit_module, "remove_journal", remove_journal)
    commit_module.commit(str(child), quiet=True, checkpoint_bytes=64 * KIB)
    monkeypatch.undo()
    with open_chain(str(base)) as chain:
        assert chain.read(0, chain.size) == flat  # the commit itself worked
    assert any(e.kind == "journal" for e in log.events)

    # Through the child, the chain reads the same in every state; the parent alone shows
    # each sector's old value or the child's; check sees nothing but commit's own marks; and
    # re-running the commit from the state finishes it.
    later = {s: {flat[s * SECTOR:(s + 1) * SECTOR]} for s in range(DISK // SECTOR)}
    states = crash_states(log.events, rng)
    work = tmp_path / "replay"
    for number, state in enumerate(states):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        shutil.copyfile(child, work / "child.vhd")
        rebuild(initial, log.events, state, work, journal_name="base.vhd.vhdfs-commit")
        with open_chain(str(work / "child.vhd")) as chain:
            assert chain.read(0, chain.size) == flat, state.label
        with open_chain(str(work / "base.vhd")) as chain:
            got = chain.read(0, chain.size)
        for sector in range(DISK // SECTOR):
            value = got[sector * SECTOR:(sector + 1) * SECTOR]
            assert value == parent_before[sector * SECTOR:(sector + 1) * SECTOR] or value in later[sector], \
                f"{state.label}: parent sector {sector}"
        check_findings(work / "base.vhd", state.label, ALLOWED_AFTER_CRASH | COMMIT_MARKS)
        if number % 2 == 0 or not state.extra:
            commit_module.commit(str(work / "child.vhd"), quiet=True)
            with open_chain(str(work / "base.vhd")) as chain:
                assert chain.read(0, chain.size) == flat, f"{state.label}: resumed commit"
            check_findings(work / "base.vhd", f"{state.label} (resumed)", set())
    assert len(states) > 10


# ------------------------------------------------------------------ writable mount
def _errorfs_module():
    spec = importlib.util.spec_from_file_location("errorfs", Path(__file__).with_name("errorfs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_through_a_writable_mount_survive_a_crash_at_any_point(tmp_path: Path, mounts) -> None:
    """The same replay with the writes of `vhdfs mount --rw` itself: the daemon's pwrite,
    fsync and ftruncate are logged by errorfs (a FUSE pass-through under it), as
    dm-log-writes would log them. Flush points are the test's fsync calls (the daemon's
    periodic flushes only make more writes durable, which the check allows)."""
    read_log = _errorfs_module().read_log
    rng = random.Random(23)
    backing = tmp_path / "backing"
    backing.mkdir()
    base, child = base_and_child(backing, False)
    initial = child.read_bytes()
    with open_chain(str(child)) as chain:
        model = Model(chain.read(0, chain.size))
    log_path = tmp_path / "writes.log"
    logged = mounts.errorfs(backing, tmp_path / "logged", [], log_path)
    mount = mounts.vhdfs(logged.mountpoint / "child.vhd", tmp_path / "mnt", "--rw")
    flat = bytearray(model.start)
    fd = os.open(mount.mountpoint / "disk.raw", os.O_RDWR)
    try:
        for kind, offset, length in write_stream(rng, 30):
            if kind == "flush":
                os.fsync(fd)
                model.flushes.append((len(read_log(log_path)), len(model.after)))
                continue
            data = rng.randbytes(length)
            assert os.pwrite(fd, data, offset) == length
            flat[offset:offset + length] = data
            first, last = offset // SECTOR, (offset + length - 1) // SECTOR
            model.after.append({s: bytes(flat[s * SECTOR:(s + 1) * SECTOR]) for s in range(first, last + 1)})
    finally:
        os.close(fd)
    mount.stop()
    logged.stop()
    records = read_log(log_path)
    model.flushes.append((len(records), len(model.after)))
    assert {name for _, name, _, _ in records} == {"child.vhd"}, "only the top layer is written"
    events = [Event(kind, name, offset, data if kind == "write" else b"")
              for kind, name, offset, data in records]
    assert sum(e.kind == "sync" for e in events) >= 3
    log = Log(events)
    states = replay_and_check(backing, base, child, initial, log, model, rng, tmp_path / "replay",
                              check_every=4)
    assert states > 20
