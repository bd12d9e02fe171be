"""The concurrency matrix of docs/locking.md, run for real.

For each command A already running (a real mount, or a command held still by the test hook
VHDFS_TEST_PAUSE right after it took its last lock) on the child or on the parent of
base.vhd <- mid.vhd <- top.vhd, and of the VHDX chain base.vhdx <- mid.avhdx <- top.avhdx
(the same locks, so the same table), every command B is started on the child and on the parent:
its exit code must be the table's (`busy`: 9 and a line naming A's pid and the fix), and
once A has finished every image must read byte for byte what a model of A's effect says.
The table is read from docs/locking.md, so the documentation is what the code does.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.azure.conftest import azurite, container, env  # noqa: F401 - fixtures
from tests.fuse.conftest import PROJECT_ROOT
from tests.ops.conftest import cli
from tests.ops.test_locking import Paused
from tests.tooling import force_unmount
from vhdfs.create import (
    create_differencing,
    create_dynamic,
    create_vhdx,
    create_vhdx_differencing,
    parent_info_of,
)
from vhdfs.errors import ChainError
from vhdfs.resolve import open_chain
from vhdfs.sources import locks
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

MiB = 1 << 20
SIZE = 20 * MiB  # Azure's smallest disk: upload is one of the commands
COMMANDS = ("mount --rw", "mount", "commit", "commit --delete-child", "set-parent",
            "check --repair", "check", "upload", "convert", "create --parent")
TARGETS = ("child", "parent")
FORMATS = ("vhd", "vhdx")
# The files of the chain, per format: the image of each target, and each image's parent.
IMAGES = {"vhd": {"child": "top.vhd", "parent": "mid.vhd"},
          "vhdx": {"child": "top.avhdx", "parent": "mid.avhdx"}}
PARENTS = {"vhd": {"top.vhd": "mid.vhd", "mid.vhd": "base.vhd"},
           "vhdx": {"top.avhdx": "mid.avhdx", "mid.avhdx": "base.vhdx"}}
CHILD_SUFFIX = {"vhd": ".vhd", "vhdx": ".avhdx"}  # what create --parent makes over the chain
# Where the VHDX chain differs from the table (docs/locking.md says so under it): once
# `mount --rw` of the parent has written, the parent has a new DataWriteGuid and the child
# is no longer its child, so every command on the child that looks for its parent fails
# with exit 4 (the parent is "not the parent") instead of waiting for the mount; set-parent,
# which is given the parent, still finds it busy.
VHDX_BROKEN_CHILD = ("mount --rw", "parent")
DOC = PROJECT_ROOT / "docs" / "locking.md"
DELETED, BROKEN = "deleted", "broken"  # model states of a file besides its bytes


def documented() -> dict[tuple[str, str], dict[str, tuple[str, str]]]:
    """(A, its target) -> {B: (result on the child, result on the parent)} from the doc."""
    text = DOC.read_text()
    table = text.split("<!-- matrix:", 1)[1].split("<!-- end of matrix -->", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert tuple(header[2:]) == COMMANDS, header
    out = {}
    for line in rows[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        out[(cells[0], cells[1])] = {
            b: tuple(part.strip() for part in cell.split("/"))
            for b, cell in zip(COMMANDS, cells[2:], strict=True)}
    return out


MATRIX = documented()


def test_the_documented_matrix_covers_every_pair():
    assert set(MATRIX) == {(a, t) for a in COMMANDS for t in TARGETS}
    for row in MATRIX.values():
        assert all(set(cell) <= {"ok", "busy"} and len(cell) == 2 for cell in row.values())


# ---------------------------------------------------------------------------- the chain
def _write(path: Path, rng: random.Random, ranges: list[tuple[int, int]]) -> None:
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        for offset, length in ranges:
            layer.write(offset, rng.randbytes(length))


def _flat(path: Path) -> bytes:
    with open_chain(str(path)) as chain:
        return chain.read(0, chain.size)


def _write_vhdx(path: Path, rng: random.Random, ranges: list[tuple[int, int]]) -> None:
    with open_chain(str(path), writable=True) as chain:
        for offset, length in ranges:
            chain.write(offset, rng.randbytes(length))


def build_chain(folder: Path, fmt: str = "vhd") -> None:
    """base <- mid <- top, each holding data; top holds all of the first MiB (so a write into
    mid there leaves what top reads unchanged). The same bytes every time (not copies: a
    copy's absolute locators would name the original, a parent by another path)."""
    folder.mkdir()
    rng = random.Random(3)
    base_writes = [(rng.randrange(SIZE // 4096) * 4096, 64 * 1024) for _ in range(12)]
    layer_writes = [[(rng.randrange(SIZE // 512 - 200) * 512, 40 * 1024) for _ in range(10)]
                    for _ in range(2)]
    top, mid = IMAGES[fmt]["child"], IMAGES[fmt]["parent"]
    base = folder / PARENTS[fmt][mid]
    if fmt == "vhdx":
        create_vhdx(base, SIZE, block_size=MiB)
        _write_vhdx(base, rng, base_writes)
        for name, parent, writes in ((mid, base, layer_writes[0]),
                                     (top, folder / mid, layer_writes[1])):
            with open_chain(str(parent)) as chain:
                create_vhdx_differencing(folder / name, parent, chain.top, block_size=MiB)
            _write_vhdx(folder / name, rng, writes)
        _write_vhdx(folder / top, rng, [(0, MiB)])
        return
    create_dynamic(base, SIZE, 512 * 1024)
    _write(base, rng, base_writes)
    for name, parent, writes in ((mid, base, layer_writes[0]), (top, folder / mid, layer_writes[1])):
        with Layer(LocalFile(parent)) as layer:
            create_differencing(folder / name, parent_info_of(parent, layer), 512 * 1024)
        _write(folder / name, rng, writes)
    _write(folder / top, rng, [(0, MiB)])


@pytest.fixture(scope="module")
def flats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """What each image of build_chain reads, per format."""
    out = {}
    for fmt in FORMATS:
        folder = tmp_path_factory.mktemp("model") / f"chain-{fmt}"
        build_chain(folder, fmt)
        out[fmt] = {path.name: _flat(path) for path in folder.iterdir()}
    return out


# ---------------------------------------------------------------------------- A: running
class Running:
    """Command A, holding its locks until `finish`."""

    pid: int
    fix: str  # the fix a refusal must name

    def finish(self) -> None: ...

    def cleanup(self) -> None: ...


class MountRunning(Running):
    def __init__(self, image: Path, mountpoint: Path, writable: bool) -> None:
        mountpoint.mkdir()
        self.mountpoint = mountpoint
        args = ["mount", *(["--rw"] if writable else []), image, mountpoint]
        done = vhdfs(*args)
        assert done.returncode == 0, done.stderr
        self.pid = int(re.search(r"daemon pid (\d+)", done.stdout).group(1))
        self.fix = f"unmount it first: vhdfs umount {mountpoint}"

    def finish(self) -> None:
        done = vhdfs("umount", self.mountpoint)
        assert done.returncode == 0, done.stderr

    def cleanup(self) -> None:
        force_unmount(self.mountpoint)


class PausedRunning(Running):
    def __init__(self, folder: Path, args: list[object], mode: str, name: str,
                 environment: dict) -> None:
        self.paused = Paused(folder, args, mode, name, env=environment)
        self.pid = self.paused.pid
        self.fix = ("wait for that commit to finish" if args[0] == "commit"
                    else "wait for it to finish")

    def finish(self) -> None:
        done = self.paused.go()
        assert done.returncode == 0, done.stdout + done.stderr

    def cleanup(self) -> None:
        if self.paused.proc.poll() is None:
            self.paused.kill()


def vhdfs(*args: object, environment: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=environment)


@dataclass
class Case:
    folder: Path  # the chain
    out: Path  # outputs of the commands (not beside the chain: they are no siblings)
    environment: dict
    container: str
    model: dict[str, bytes | str]
    fmt: str = "vhd"

    def path(self, target: str) -> Path:
        return self.folder / IMAGES[self.fmt][target]

    def parent(self, target: str) -> Path:
        return self.folder / PARENTS[self.fmt][self.path(target).name]

    @property
    def base(self) -> str:
        return PARENTS[self.fmt][IMAGES[self.fmt]["parent"]]

    def new_child(self, name: str) -> Path:
        """Where create --parent writes (not beside the chain), in the chain's format."""
        return self.out / (name + CHILD_SUFFIX[self.fmt])


def start_a(command: str, target: str, case: Case) -> Running:
    image = case.path(target)
    parent = case.parent(target)
    if command.startswith("mount"):
        running = MountRunning(image, case.out / "mnt-a", command == "mount --rw")
        if command == "mount --rw":
            _write_through(running.mountpoint, target, case)
        return running
    args: list[object]
    mode, name = "shared", case.base  # readers: the last layer they lock
    if command.startswith("commit"):
        args = command.split() + [image]
        mode, name = "exclusive", parent.name
    elif command == "set-parent":
        args = ["set-parent", image, parent]
    elif command == "check --repair":
        args = ["check", "--repair", image]
    elif command == "check":
        args = ["check", image]
    elif command == "upload":
        args = ["upload", image, f"az://{case.container}/a-{target}.vhd"]
    elif command == "convert":
        args = ["convert", image, case.out / "a.raw", "--to", "raw"]
    else:
        args = ["create", case.new_child("a-new"), "--parent", image]
    return PausedRunning(case.out, args, mode, name, case.environment)


def _write_through(mountpoint: Path, target: str, case: Case) -> None:
    """Writes into the mounted image: one fsynced, one left to the unmount's flush. Into the
    parent only where the child holds everything, so the child reads the same."""
    rng = random.Random(target)
    name = case.path(target).name
    offsets = [5 * MiB + 512, 9 * MiB] if target == "child" else [64 * 1024, 300 * 1024 + 512]
    model = bytearray(case.model[name])
    fd = os.open(mountpoint / "disk.raw", os.O_WRONLY)
    try:
        for index, offset in enumerate(offsets):
            data = rng.randbytes(48 * 1024)
            assert os.pwrite(fd, data, offset) == len(data)
            model[offset:offset + len(data)] = data
            if index == 0:
                os.fsync(fd)
    finally:
        os.close(fd)
    case.model[name] = bytes(model)


def model_after(command: str, target: str, case: Case) -> None:
    """What A's success does to the images (mount --rw's writes are in the model already)."""
    model = case.model
    image, parent, top = case.path(target).name, case.parent(target).name, case.path("child").name
    if command.startswith("commit"):
        model[parent] = model[image]
        if command.endswith("--delete-child"):
            model[image] = DELETED
            if target == "parent":
                model[top] = BROKEN  # its parent is gone: what the user asked for
    if command == "mount --rw" and target == "parent" and case.fmt == "vhdx":
        # Written, the parent has a new DataWriteGuid: its child no longer matches it (as
        # in Hyper-V), where a VHD child goes on reading it.
        model[top] = BROKEN


# ---------------------------------------------------------------------------- B: started
def run_b(command: str, target: str, case: Case, tag: str) -> tuple[int, str]:
    """B's exit code and everything it printed; B's output, if any, is checked here."""
    image = case.path(target)
    if command.startswith("mount"):
        mountpoint = case.out / f"mnt-{tag}"
        mountpoint.mkdir()
        done = vhdfs("mount", *(["--rw"] if command == "mount --rw" else []), image, mountpoint)
        try:
            if done.returncode == 0:
                digest = hashlib.sha256((mountpoint / "disk.raw").read_bytes()).hexdigest()
                assert digest == hashlib.sha256(case.model[image.name]).hexdigest()
                umounted = vhdfs("umount", mountpoint)
                assert umounted.returncode == 0, umounted.stderr
        finally:
            force_unmount(mountpoint)
        return done.returncode, done.stdout + done.stderr
    out = case.out / f"b-{tag}"
    args: list[object]
    if command.startswith("commit"):
        args = command.split() + [image]
    elif command == "set-parent":
        args = ["set-parent", image, case.parent(target)]
    elif command == "check --repair":
        args = ["check", "--repair", image]
    elif command == "check":
        args = ["check", image]
    elif command == "upload":
        args = ["upload", image, f"az://{case.container}/b-{tag}.vhd"]
    elif command == "convert":
        args = ["convert", image, out, "--to", "raw"]
    else:
        out = case.new_child(f"b-{tag}")
        args = ["create", out, "--parent", image]
    done = cli(*args)  # in this process: quick, and it must leave no lock behind
    assert locks.held_here() == {}, f"{tag} left locks behind"
    if command == "convert" and done.returncode == 0:
        assert out.read_bytes() == case.model[image.name]
    if done.returncode != 0:
        assert not out.exists(), f"{tag} was refused but made {out.name}"
    return done.returncode, done.stdout + done.stderr


def check_model(case: Case) -> None:
    for name, expected in case.model.items():
        path = case.folder / name
        if expected == DELETED:
            assert not path.exists(), f"{name} should have been deleted"
        elif expected == BROKEN:
            with pytest.raises(ChainError):
                _flat(path)
        else:
            assert _flat(path) == expected, f"{name} does not read as the model says"
            done = cli("check", path)
            assert done.returncode == 0, f"check {name}: {done.stdout}"


# ---------------------------------------------------------------------------- the rows
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matrix_row(tmp_path, flats, env, container, fmt, command, target):  # noqa: F811
    folder = tmp_path / "chain"
    build_chain(folder, fmt)
    out = tmp_path / "out"
    out.mkdir()
    case = Case(folder, out, env, container, dict(flats[fmt]), fmt)
    row = MATRIX[(command, target)]
    wrong: list[str] = []
    running = start_a(command, target, case)
    try:
        for b in COMMANDS:
            for index, b_target in enumerate(TARGETS):
                tag = f"{b.replace(' ', '')}-{b_target}"
                code, said = run_b(b, b_target, case, tag)
                want = row[b][index]
                if fmt == "vhdx" and (command, target) == VHDX_BROKEN_CHILD and \
                        b_target == "child" and b != "set-parent":
                    if code != 4 or "not the parent" not in said:
                        wrong.append(f"{b} on the {b_target}: exit {code}, expected 4 (the "
                                     f"written parent is no longer its parent): {said}")
                elif want == "ok" and code != 0:
                    wrong.append(f"{b} on the {b_target}: exit {code}, expected ok: {said}")
                elif want == "busy":
                    named = f"(pid {running.pid}" in said and running.fix in said
                    if code != 9 or not named:
                        wrong.append(f"{b} on the {b_target}: exit {code}, expected busy "
                                     f"naming pid {running.pid} and '{running.fix}': {said}")
        running.finish()
    finally:
        running.cleanup()
    assert not wrong, f"{command} on the {target}:\n" + "\n".join(wrong)
    model_after(command, target, case)
    check_model(case)
