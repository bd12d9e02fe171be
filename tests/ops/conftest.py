"""Chains for the maintenance tests: build, fill, flatten, and libvhdi's view of them."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

from vhdfs.create import create_differencing, create_dynamic, create_fixed, parent_info_of
from vhdfs.image import SECTOR
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.bitmap import bitmap_bytes
from vhdfs.vhd.layer import UNALLOCATED, Layer

KiB = 1024
MiB = 1024 * KiB


def vhdfs(*args: str, cwd: Path | None = None, env: dict | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


class Ran:
    """What an in-process run of the command line printed, like subprocess's result."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args: object) -> Ran:
    """`vhdfs ARGS` in this process (much quicker than a subprocess), output captured."""
    import contextlib
    import io

    from vhdfs.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Ran(code, out.getvalue(), err.getvalue())


def make_base(path: Path, kind: str, size: int, block_size: int = 512 * KiB) -> Path:
    if kind == "fixed":
        create_fixed(path, size)
    else:
        create_dynamic(path, size, block_size)
    return path


def make_child(parent: Path, child: Path, block_size: int | None = None) -> Path:
    with Layer(LocalFile(parent)) as layer:
        create_differencing(child, parent_info_of(parent, layer), block_size)
    return child


def fill(path: Path, writes: list[tuple[int, bytes]], options: OpenOptions | None = None) -> None:
    with open_chain(str(path), options, writable=True) as chain:
        for offset, data in writes:
            chain.write(offset, data)


def flat(path: Path, options: OpenOptions | None = None) -> bytes:
    with open_chain(str(path), options) as chain:
        return chain.read(0, chain.size)


def random_writes(rnd: random.Random, size: int, count: int, unit: int = SECTOR,
                  longest: int = 96 * KiB) -> list[tuple[int, bytes]]:
    """Writes at multiples of `unit` (512: single sectors, partial bitmap bytes)."""
    out = []
    for _ in range(count):
        length = rnd.randrange(1, longest // unit + 1) * unit
        offset = rnd.randrange(0, (size - length) // unit + 1) * unit
        out.append((offset, rnd.randbytes(length)))
    return out


def build_chain(folder: Path, parent_kind: str, size: int = 8 * MiB, seed: int = 1,
                unit: int = SECTOR, writes: int = 12) -> list[Path]:
    """child.vhd over its parent: `dynamic`/`fixed` parent.vhd, or `differencing` parent.vhd
    over base.vhd (3 layers). Returns the paths top first."""
    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if parent_kind == "differencing":
        base = make_base(folder / "base.vhd", "dynamic", size)
        fill(base, random_writes(rnd, size, writes, unit))
        parent = make_child(base, folder / "parent.vhd", 256 * KiB)
        paths = [parent, base]
    else:
        parent = make_base(folder / "parent.vhd", parent_kind, size)
        paths = [parent]
    fill(parent, random_writes(rnd, size, writes, unit))
    child = make_child(parent, folder / "child.vhd", 512 * KiB if parent_kind != "fixed" else None)
    fill(child, random_writes(rnd, size, writes, unit))
    return [child, *paths]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def libvhdi_unreliable_sectors(paths: list[Path]) -> set[int]:
    """Sectors libvhdi 20210425 may get wrong in a chain of these files: in any
    differencing layer, a clear bit in a bitmap byte that also has a set bit."""
    wrong: set[int] = set()
    for path in paths:
        with Layer(LocalFile(path)) as layer:
            if not layer.is_differencing:
                continue
            per_block = layer.block_size // SECTOR
            for index, entry in enumerate(layer.bat):
                if entry == UNALLOCATED:
                    continue
                bitmap = layer.read_data(entry * SECTOR, bitmap_bytes(layer.block_size))
                for byte_index, byte in enumerate(bitmap[:per_block // 8]):
                    if byte not in (0, 0xFF):
                        for bit in range(8):
                            if not byte & (0x80 >> bit):
                                wrong.add(index * per_block + byte_index * 8 + bit)
    return wrong


def same_except(ours: bytes, theirs: bytes, skip: set[int]) -> list[int]:
    """Sectors that differ, leaving out `skip`."""
    assert len(ours) == len(theirs)
    return [s for s in range(len(ours) // SECTOR) if s not in skip
            and ours[s * SECTOR:(s + 1) * SECTOR] != theirs[s * SECTOR:(s + 1) * SECTOR]]


def run_killed(job, kill_after: int) -> int:
    """Run `job(faults)` in a forked process that kills itself before I/O event number
    `kill_after`; return the number of events it got through (-1: it finished first)."""
    from vhdfs.maintain.faults import Faults

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child process: never returns into pytest
        os.close(read_end)
        code = 0
        try:
            faults = Faults(kill_after=kill_after)
            job(faults)
        except BaseException:  # noqa: BLE001 - reported through the exit code
            code = 3
        os.write(write_end, b"done")
        os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    finished = os.read(read_end, 16) == b"done"
    os.close(read_end)
    if finished:
        assert os.waitstatus_to_exitcode(status) == 0, "the job failed in the forked process"
        return -1
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    return kill_after
