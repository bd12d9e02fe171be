"""Crash consistency of `vhdfs commit` of an .avhdx, replayed as the VHD commit's is
(tests/hostile/test_hostile_crash.py) and with the recorder of the VHDX write path
(tests/vhdx/test_vhdx_write_crash.py).

Every pwrite, fsync and ftruncate the commit makes to the child (its locator) and to the
parent, and every write and removal of its journal, is recorded. The files are rebuilt at
every flush point, at random subsets of the 512-byte pieces written since, with and without
each metadata write, and at a random prefix of each interval (a process crash). In every
state:
- the chain read through the child reads the same as before the commit (the child matches
  the parent through one of its two linkages at every moment);
- the parent alone reads each sector as it was or as the child has it, never anything else;
- `vhdfs check` of the chain finds nothing but the commit's own mark and a log to replay;
- qemu-img reads the parent (fixed or dynamic) as we do, after its own replay;
- running the commit again finishes it (in every fourth state with its journal deleted
  first: the mark in the parent, or a fresh commit, is enough): the parent reads the
  child's disk, the child is linked to the parent's new DataWriteGuid alone, check is clean.
Then the commit is killed before each of its writes and syncs in turn (a process crash at
every point) and finished by running it again, or by `check --repair` of the parent.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from test_vhdx_write_crash import Recorder, metadata_states

from tests.hostile.test_hostile_crash import SECTOR, Event, crash_states, rebuild
from tests.ops.conftest import run_killed
from tests.tooling import need
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.maintain import commit_vhdx as commit_module
from vhdfs.maintain import journals as journals_module
from vhdfs.maintain.check import check_image
from vhdfs.maintain.commit import commit
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.findings import ERROR
from vhdfs.maintain.journals import journal_path
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx.layer import VhdxLayer

MiB = 1 << 20
DISK = 6 * MiB + 3 * 4096
CHECKPOINT = 96 * 1024
# What a crashed state may show: a log to replay, a header torn while written.
EXPECTED_WARNINGS = ("not yet replayed", "fails its CRC-32C check; using header")
# What check may find in a crashed state: the commit's own mark, a log to replay.
CRASH_FINDINGS = {"mid-commit", "log-unreplayed", "header-damaged"}


def scenario(folder: Path, kind: str, rng: random.Random) -> tuple[Path, Path, list[Path]]:
    """(child, parent, other files) for a parent that is fixed, dynamic or differencing."""
    base = folder / "base.vhdx"
    create_vhdx(base, DISK, fixed=kind == "fixed", block_size=MiB)
    with open_chain(str(base), writable=True) as chain:
        chain.write(0, rng.randbytes(256 * 1024))
        chain.write(3 * MiB + 4096, rng.randbytes(64 * 1024))
    parent, beside = base, []
    if kind == "differencing":
        parent = folder / "mid.avhdx"
        with open_chain(str(base)) as chain:
            create_vhdx_differencing(parent, base, chain.top, block_size=MiB)
        with open_chain(str(parent), writable=True) as chain:
            chain.write(2 * MiB + 512, rng.randbytes(8192))
        beside = [base]
    child = folder / "child.avhdx"
    with open_chain(str(parent)) as chain:
        create_vhdx_differencing(child, parent, chain.top, block_size=MiB)
    with open_chain(str(child), writable=True) as chain:
        chain.write(4096, rng.randbytes(1024))  # partial sectors of a block
        chain.write(MiB, rng.randbytes(MiB))  # a whole block
        chain.write(3 * MiB + 512, rng.randbytes(70 * 1024))  # over the parent's data
        chain.write(5 * MiB + 8192, rng.randbytes(4096))
    return child, parent, beside


def read(path: Path) -> tuple[bytes, list[str]]:
    with open_chain(str(path)) as chain:
        return chain.read(0, chain.size), list(chain.warnings)


def errors(path: Path) -> list[str]:
    report = check_image(str(path))
    return [f"{layer.path}: {f.code}: {f.message}" for layer in report.layers for f in layer.findings
            if f.severity == ERROR and f.code not in CRASH_FINDINGS] + [
        f"{layer.path}: {layer.unchecked or layer.in_use}" for layer in report.layers
        if layer.unchecked or layer.in_use]


def qemu_reads(parent: Path, folder: Path) -> bytes:
    copy, raw = folder / "qemu-copy.vhdx", folder / "qemu.raw"
    shutil.copyfile(parent, copy)
    subprocess.run(["qemu-img", "check", "-q", "-r", "all", "-f", "vhdx", str(copy)],
                   capture_output=True)
    subprocess.run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(copy), str(raw)],
                   check=True, capture_output=True)
    return raw.read_bytes()


def finished(child: Path, parent: Path, flat: bytes, label: str) -> None:
    got, warnings = read(parent)
    assert got == flat and warnings == [], f"{label}: the parent after the rerun"
    got, warnings = read(child)
    assert got == flat and warnings == [], f"{label}: the child after the rerun"
    with VhdxLayer(LocalFile(child)) as layer, VhdxLayer(LocalFile(parent)) as top:
        assert layer.parent_ids == (top.unique_id,), label
        assert top.commit_mark is None, label
    assert not journal_path(parent).exists(), label
    assert check_image(str(child)).exit_code == 0, label


@pytest.mark.parametrize("kind", ["dynamic", "fixed", "differencing"])
def test_commit_survives_a_crash_at_any_point_and_resumes(tmp_path: Path, monkeypatch,
                                                          kind: str) -> None:
    rng = random.Random(sum(map(ord, kind)) + 7)
    origin = tmp_path / "origin"
    origin.mkdir()
    child, parent, beside = scenario(origin, kind, rng)
    flat, _ = read(child)
    parent_before, _ = read(parent)
    initial = {child.name: child.read_bytes(), parent.name: parent.read_bytes()}
    journal_name = journal_path(parent).name

    recorder = Recorder(monkeypatch, {child.name, parent.name})
    events = recorder.log.events
    # The commit journal is written by journals.write_journal, removed by the commit itself.
    real_write_atomic, real_remove_journal = journals_module.write_atomic, commit_module.remove_journal

    def write_atomic(path, data, faults, **kwargs) -> None:
        real_write_atomic(path, data, faults, **kwargs)
        events.append(Event("journal", journal_name, data=bytes(data)))

    def remove_journal(path, faults) -> None:
        real_remove_journal(path, faults)
        events.append(Event("journal", journal_name, data=None))

    monkeypatch.setattr(journals_module, "write_atomic", write_atomic)
    monkeypatch.setattr(commit_module, "remove_journal", remove_journal)
    commit(str(child), quiet=True, warn=lambda text: None, checkpoint_bytes=CHECKPOINT)
    monkeypatch.undo()
    finished(child, parent, flat, "the recorded commit")
    assert {e.file for e in events if e.kind == "write"} == {child.name, parent.name}
    assert sum(e.kind == "journal" for e in events) >= 4  # prepared, copying, checkpoints, removed

    qemu = kind != "differencing"
    if qemu:
        need("qemu-img")
    states = crash_states(events, rng) + metadata_states(events, lambda offset: offset < 4 * MiB)
    work = tmp_path / "work"
    for number, state in enumerate(states):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        for path in beside:
            shutil.copyfile(path, work / path.name)
        rebuild(initial, events, state, work, journal_name=journal_name)
        label = f"state {number}, {state.label}"
        got, warnings = read(work / child.name)
        assert got == flat, f"{label}: the chain through the child changed"
        assert all(any(t in w for t in EXPECTED_WARNINGS) for w in warnings), f"{label}: {warnings}"
        alone, _ = read(work / parent.name)
        for sector in range(len(flat) // SECTOR):
            span = slice(sector * SECTOR, (sector + 1) * SECTOR)
            assert alone[span] in (parent_before[span], flat[span]), f"{label}: parent sector {sector}"
        if number % 2 == 0 or not state.extra:
            assert errors(work / child.name) == [], label
        if qemu and number % 5 == 0:
            assert qemu_reads(work / parent.name, tmp_path) == alone, f"{label}: qemu-img"
        if number % 2 == 1 or not state.extra:
            if number % 4 == 3:  # the journal lost too: the mark in the parent is enough
                journal_path(work / parent.name).unlink(missing_ok=True)
            commit(str(work / child.name), quiet=True, warn=lambda text: None)
            finished(work / child.name, work / parent.name, flat, label)
    assert len(states) > 60


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_killed_before_each_write_and_sync_then_finished(tmp_path: Path, kind: str) -> None:
    """A process crash at every point: the rerun (or, every third point, check --repair of
    the parent) finishes it; the chain through the child never changes."""
    rng = random.Random(len(kind))
    origin = tmp_path / "origin"
    origin.mkdir()
    child, parent, _ = scenario(origin, kind, rng)
    flat, _ = read(child)
    reference = tmp_path / "reference"
    shutil.copytree(origin, reference)
    counted = Faults(record=True)
    commit(str(reference / child.name), quiet=True, faults=counted, warn=lambda text: None,
           checkpoint_bytes=CHECKPOINT)
    assert counted.events > 40
    repaired = 0
    for point in range(counted.events):
        work = tmp_path / f"kill-{point}"
        shutil.copytree(origin, work)
        child_at, parent_at = work / child.name, work / parent.name

        def job(faults, child_at=child_at):
            commit(str(child_at), quiet=True, faults=faults, warn=lambda text: None,
                   checkpoint_bytes=CHECKPOINT)

        assert run_killed(job, point) == point
        got, _ = read(child_at)
        assert got == flat, f"killed before {counted.log[point]}: the chain through the child"
        report = check_image(str(parent_at))
        if journal_path(parent_at).exists() and point % 3 == 0:
            assert report.exit_code == 4, counted.log[point]
            assert check_image(str(parent_at), repair=True).exit_code == 1, counted.log[point]
            repaired += 1
            if read(parent_at)[0] != flat:  # rolled back: nothing had been copied yet
                assert ids_of(child_at)[0] == unique_of(parent_at), counted.log[point]
                commit(str(child_at), quiet=True, warn=lambda text: None)
        else:
            commit(str(child_at), quiet=True, warn=lambda text: None)
        finished(child_at, parent_at, flat, f"killed before event {point}: {counted.log[point]}")
        shutil.rmtree(work)
    assert repaired >= 5


def ids_of(path: Path) -> tuple[bytes, ...]:
    with VhdxLayer(LocalFile(path)) as layer:
        return layer.parent_ids


def unique_of(path: Path) -> bytes:
    with VhdxLayer(LocalFile(path)) as layer:
        return layer.unique_id
