"""A crash at any moment of vhdfs resize leaves the old disk or the new one, replayed the way
dm-log-writes is used (tests/hostile/test_hostile_crash.py): every write, fsync and truncate
of the resize is recorded, the image rebuilt at every flush point, at random subsets of the
512-byte pieces written since (a power loss keeps any of them), with one metadata write alone
or left out, and at prefixes of them (a kill -9); every state must
- open (its only possible warning: the footer copy at offset 0 differs, between the trailing
  footer and its copy), and read the whole old disk or the whole new one, nothing else;
- be finished by running the same resize again: the new disk, and check finds no error.
The writes are recorded in-process (LocalFile's write, sync and truncate), and once from a
real `vhdfs resize` process under errorfs, a FUSE pass-through that logs what reaches it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.conftest import errorfs
from tests.hostile.errorfs import read_log
from tests.hostile.test_hostile_crash import Event, crash_states, rebuild
from tests.ops.conftest import KiB, MiB, fill, flat, make_base, make_child
from vhdfs.maintain.check import check_image
from vhdfs.maintain.findings import ERROR
from vhdfs.resize import resize
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile

COPY_DIFFERS = "footer copy at offset 0 differs"


def record(monkeypatch: pytest.MonkeyPatch, image: Path, size: str, force: bool) -> list[Event]:
    """Run resize in this process with every write, sync and truncate of `image` logged."""
    events: list[Event] = []
    real_write, real_sync, real_truncate = LocalFile.write_at, LocalFile.sync, LocalFile.truncate

    def write_at(self, offset: int, data: bytes) -> None:
        real_write(self, offset, data)
        events.append(Event("write", self.path.name, offset, bytes(data)))

    def sync(self) -> None:
        real_sync(self)
        if self.writable:
            events.append(Event("sync", self.path.name))

    def truncate(self, length: int) -> None:
        real_truncate(self, length)
        events.append(Event("truncate", self.path.name, length))

    with monkeypatch.context() as patch:
        patch.setattr(LocalFile, "write_at", write_at)
        patch.setattr(LocalFile, "sync", sync)
        patch.setattr(LocalFile, "truncate", truncate)
        resize(str(image), size, force=force)
    assert {e.file for e in events} <= {image.name}, "only the image is written"
    return events


def replay(image: Path, initial: bytes, events: list[Event], old: bytes, new: bytes,
           size: str, work: Path, others: list[Path] = (), seed: int = 7) -> int:
    """Check every crash state of `events` (see the module's docstring); returns how many."""
    rng = random.Random(seed)
    states = crash_states(events, rng)
    seen = set()
    for state in states:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        for other in others:
            shutil.copyfile(other, work / other.name)
        rebuild({image.name: initial}, events, state, work)
        path = work / image.name
        with open_chain(str(path)) as chain:
            got = chain.read(0, chain.size)
            strange = [w for w in chain.warnings if COPY_DIFFERS not in w]
        assert not strange, f"{state.label}: {strange}"
        assert got in (old, new), f"{state.label}: reads {len(got)} bytes, neither disk"
        seen.add(got == new)
        resize(str(path), size, force=True)  # run again: finishes (or repeats) the resize
        assert flat(path) == new, f"{state.label}: after running resize again"
        report = check_image(str(path))
        errors = [f"{f.code}: {f.message}" for layer in report.layers for f in layer.findings
                  if f.severity == ERROR]
        assert not errors, f"{state.label}: {errors}"
    assert seen == {False, True}, "the states hold both the old disk and the new one"
    return len(states)


def grown(data: bytes, size: int) -> bytes:
    return data[:size] + bytes(max(0, size - len(data)))


CASES = {
    # name: (kind, size, block size, writes, new size)
    "fixed-grow": ("fixed", 4 * MiB, 0, [(0, 64 * KiB), (4 * MiB - 4096, 4096)], 9 * MiB),
    "fixed-shrink-cutting": ("fixed", 8 * MiB, 0, [(0, 64 * KiB), (5 * MiB, 8192)], 4 * MiB + 512),
    "dynamic-grow-in-padding": ("dynamic", 4 * MiB, 512 * KiB, [(0, 8192), (3 * MiB, 4096)], 6 * MiB),
    "dynamic-grow-moving-blocks": ("dynamic", 2 * MiB, 4 * KiB,
                                   [(0, 16 * KiB), (2 * MiB - 4096, 4096)], 9 * MiB),
    "dynamic-shrink-cutting": ("dynamic", 8 * MiB, 512 * KiB,
                               [(0, 8192), (5 * MiB + 512, 100 * KiB), (7 * MiB, MiB)], 5 * MiB + 4096),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resize_crashed_at_any_point_leaves_the_old_or_the_new_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    kind, size, block_size, writes, new_size = CASES[case]
    rng = random.Random(case)
    image = make_base(tmp_path / "disk.vhd", kind, size, block_size or 512 * KiB)
    fill(image, [(offset, rng.randbytes(length)) for offset, length in writes])
    old, initial = flat(image), image.read_bytes()
    events = record(monkeypatch, image, str(new_size), force=True)
    new = grown(old, new_size)
    assert flat(image) == new
    assert sum(e.kind == "sync" for e in events) >= 3
    states = replay(image, initial, events, old, new, str(new_size), tmp_path / "replay")
    assert states > 10


def test_a_child_resized_to_its_parent_crashed_at_any_point(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_base(tmp_path / "base.vhd", "dynamic", 2 * MiB, 4 * KiB)
    fill(base, [(0, b"\x0b" * 8192)])
    child = make_child(base, tmp_path / "child.vhd", 4 * KiB)
    fill(child, [(4096, b"\x0c" * 8192), (2 * MiB - 1024, b"\x0d" * 1024)])
    old = flat(child)
    resize(str(base), "9M", force=True)
    initial = child.read_bytes()
    events = record(monkeypatch, child, "9M", force=False)
    new = grown(old, 9 * MiB)
    assert flat(child) == new
    # The old child does not open over the grown base (the sizes differ): its states are
    # read as the child alone, whose own sectors must be the old ones or the new ones.
    rng = random.Random(3)
    work = tmp_path / "replay"
    for state in crash_states(events, rng):
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        shutil.copyfile(base, work / base.name)
        rebuild({child.name: initial}, events, state, work)
        path = work / child.name
        try:
            with open_chain(str(path)) as chain:
                assert chain.read(0, chain.size) == new, state.label
                assert all(COPY_DIFFERS in w for w in chain.warnings), state.label
        except Exception as exc:  # noqa: BLE001 - the old child: refused over the new base
            assert "the sizes must agree" in str(exc), f"{state.label}: {exc}"
        resize(str(path), "9M")
        assert flat(path) == new, state.label


def test_the_resize_command_logged_by_errorfs_replays_old_or_new(tmp_path: Path) -> None:
    """The writes of a real `vhdfs resize` process, as they reach the file system (errorfs
    logs each write, fsync and truncate), replayed: the same guarantee."""
    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is missing: errorfs cannot mount")
    backing = tmp_path / "backing"
    backing.mkdir()
    rng = random.Random(5)
    image = make_base(backing / "disk.vhd", "dynamic", 2 * MiB, 4 * KiB)
    fill(image, [(0, rng.randbytes(32 * KiB)), (2 * MiB - 4096, rng.randbytes(4096))])
    old, initial = flat(image), image.read_bytes()
    log = tmp_path / "writes.log"
    mounted = errorfs(backing, tmp_path / "logged", [], log)
    try:
        done = subprocess.run([sys.executable, "-m", "vhdfs", "resize",
                               str(mounted.mountpoint / "disk.vhd"), "9M"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        mounted.stop()
    events = [Event(kind, name, offset, data if kind == "write" else b"")
              for kind, name, offset, data in read_log(log)]
    assert {e.file for e in events} == {"disk.vhd"}
    assert sum(e.kind == "sync" for e in events) >= 4
    new = grown(old, 9 * MiB)
    assert flat(image) == new
    assert replay(image, initial, events, old, new, "9M", tmp_path / "replay") > 10


def test_a_vhdx_grown_through_its_log_crashed_at_any_point(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The size and any cleared BAT entries go in one log entry: a state reads the old disk
    or (once the entry is whole) the new one, replaying it in memory."""
    from tests.ops.conftest import cli

    image = tmp_path / "disk.vhdx"
    rng = random.Random(9)
    assert cli("create", image, "--size", str(9 * MiB + 512), "--block-size", "8M").returncode == 0
    fill(image, [(0, rng.randbytes(64 * KiB)), (9 * MiB - 3584, rng.randbytes(4096))])
    old, initial = flat(image), image.read_bytes()
    events = record(monkeypatch, image, "40M", force=False)
    new = grown(old, 40 * MiB)
    assert flat(image) == new
    states = crash_states(events, random.Random(4))
    work = tmp_path / "replay"
    seen = set()
    for state in states:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        rebuild({image.name: initial}, events, state, work)
        path = work / image.name
        with open_chain(str(path)) as chain:
            got = chain.read(0, chain.size)
            strange = [w for w in chain.warnings if "not yet replayed" not in w]
        assert not strange, f"{state.label}: {strange}"
        assert got in (old, new), f"{state.label}: reads {len(got)} bytes, neither disk"
        seen.add(got == new)
        resize(str(path), "40M")
        assert flat(path) == new, f"{state.label}: after running resize again"
        report = check_image(str(path))
        errors = [f"{f.code}: {f.message}" for layer in report.layers for f in layer.findings
                  if f.severity == ERROR]
        assert not errors, f"{state.label}: {errors}"
    assert seen == {False, True} and len(states) > 10
