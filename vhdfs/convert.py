"""Flatten a chain into a raw image, a fixed or dynamic VHD, or a fixed or dynamic VHDX (or
import a raw image).

Only extents that hold data are read; ZERO extents cost nothing. Within data, all-zero
pieces are not written either, so raw output stays sparse and dynamic output allocates
only blocks that hold something. With skip_free, the clusters the guest's file systems
leave free count as ZERO extents too (`skip_free_space`, which upload uses as well).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vhdfs.chain import Chain, Extent
from vhdfs.create import atomic_output
from vhdfs.errors import ImageIOError, RefusedError, UsageError
from vhdfs.filesystems.free import FreeSpace, free_space
from vhdfs.image import SECTOR
from vhdfs.progress import Progress
from vhdfs.sources.local import LocalFile, identity_of
from vhdfs.sources.writeback import WritebackAhead
from vhdfs.vhd.build import DEFAULT_BLOCK_SIZE, check_block_size, check_size, fixed_footer, write_sparse
from vhdfs.vhd.footer import DiskType
from vhdfs.vhd.layer import Layer
from vhdfs.vhdx import build as vhdx_build
from vhdfs.vhdx.layer import VhdxLayer

TARGETS = ("raw", "fixed", "dynamic", "vhdx")  # fixed and dynamic: VHD
WINDOW = 4 * 1024 * 1024  # unit of reading, zero detection and writing
ZERO_GRAIN = 64 * 1024  # all-zero pieces of this size inside data are not written
_ZERO_GRAIN_BYTES = bytes(ZERO_GRAIN)
# pread/pwrite release the GIL: one worker per core overlaps the copies; more only contend
# (measured on 2 cores: 2 workers 0.78 s, 3 workers 0.9-1.4 s for the same 2 GB)
WORKERS = max(2, min(4, os.cpu_count() or 2))


@dataclass
class ConvertStats:
    size: int = 0
    data_read: int = 0
    data_written: int = 0
    skipped_free: int = 0  # bytes the chain stores in free file-system space, left out
    free_space: FreeSpace | None = None  # the map used (skip_free), per volume


@dataclass
class Window:
    """An aligned stretch of the flat disk and the extents in it that hold data."""

    offset: int
    length: int
    extents: list[Extent]


def data_windows(chain: Chain, progress: Progress | None = None) -> Iterator[Window]:
    """Aligned windows of the disk that hold data, in order; all-zero windows are skipped
    without reading (the extent map says so)."""
    for offset in range(0, chain.size, WINDOW):
        length = min(WINDOW, chain.size - offset)
        extents = [e for e in chain.iter_extents(offset, length) if not e.is_zero]
        if extents:
            yield Window(offset, length, extents)
        elif progress:
            progress.advance(length)


def nonzero_runs(buf: bytearray, window: Window) -> list[tuple[int, int]]:
    """(start, end) within `buf` of data that is not all zeros, at ZERO_GRAIN resolution,
    widened to whole sectors; only the window's data extents are examined."""
    runs: list[tuple[int, int]] = []
    for ext in window.extents:
        pos, end = ext.offset - window.offset, ext.offset - window.offset + ext.length
        while pos < end:
            stop = min(end, (pos // ZERO_GRAIN + 1) * ZERO_GRAIN)
            zero = _ZERO_GRAIN_BYTES if stop - pos == ZERO_GRAIN else bytes(stop - pos)
            if buf[pos:stop] != zero:
                lo, hi = pos - pos % SECTOR, -(-stop // SECTOR) * SECTOR
                if runs and runs[-1][1] >= lo:
                    runs[-1] = (runs[-1][0], max(runs[-1][1], hi))
                else:
                    runs.append((lo, hi))
            pos = stop
    return runs


_ZERO_WINDOW = memoryview(bytes(WINDOW))


class _ThreadBuffers(threading.local):
    window: bytearray | None = None  # each thread's own, made at its first reuse


_buffers = _ThreadBuffers()


def read_window(chain: Chain, window: Window, *, reuse: bool = False
                ) -> tuple[bytearray, list[tuple[int, int]]]:
    """The window's bytes and its non-zero runs. With `reuse`, the buffer is this thread's
    own and is overwritten by its next call (no fresh pages to fault in per window)."""
    if not reuse:
        buf = bytearray(window.length)
    else:
        buf = _buffers.window
        if buf is None:
            buf = _buffers.window = bytearray(WINDOW)
        view = memoryview(buf)
        pos = 0
        for ext in window.extents:  # zero what the data extents will not overwrite
            start = ext.offset - window.offset
            if start > pos:
                view[pos:start] = _ZERO_WINDOW[:start - pos]
            pos = start + ext.length
        if pos < window.length:
            view[pos:window.length] = _ZERO_WINDOW[:window.length - pos]
    chain.read_into(window.offset, memoryview(buf)[:window.length], window.extents)
    return buf, nonzero_runs(buf, window)


def data_pieces(chain: Chain, stats: ConvertStats,
                progress: Progress | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of every non-zero piece of the flat disk, in order; pieces are
    sector aligned."""
    for window in data_windows(chain, progress):
        buf, runs = read_window(chain, window)
        stats.data_read += sum(e.length for e in window.extents)
        for lo, hi in runs:
            yield window.offset + lo, bytes(buf[lo:hi])
        if progress:
            progress.advance(window.length)


def _parallel_pieces(chain: Chain, stats: ConvertStats, progress: Progress | None,
                     write: Callable[[int, memoryview], None]) -> None:
    """Read, detect zeros and write every data window, WORKERS windows at a time."""
    lock = threading.Lock()

    def one(window: Window) -> None:
        buf, runs = read_window(chain, window, reuse=True)
        view = memoryview(buf)
        written = 0
        for lo, hi in runs:
            write(window.offset + lo, view[lo:hi])
            written += hi - lo
        with lock:
            stats.data_read += sum(e.length for e in window.extents)
            stats.data_written += written
            if progress:
                progress.advance(window.length)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        pending: deque[Future] = deque()
        for window in data_windows(chain, progress):
            pending.append(pool.submit(one, window))
            if len(pending) >= 2 * WORKERS:  # bounded: memory stays at a few windows
                pending.popleft().result()
        while pending:
            pending.popleft().result()


def _write_flat(chain: Chain, path: Path, stats: ConvertStats, progress: Progress | None,
                footer: bytes = b"") -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, chain.size + len(footer))
        ahead = WritebackAhead(fd)

        def write(offset: int, data: memoryview) -> None:
            _pwrite_all(fd, data, offset, path)
            ahead.wrote(len(data))

        _parallel_pieces(chain, stats, progress, write)
        if footer:
            _pwrite_all(fd, footer, chain.size, path)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int, path: Path) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as exc:
        raise ImageIOError.from_os_error(str(path), "writing", offset, exc) from None


def _write_dynamic(chain: Chain, path: Path, block_size: int, stats: ConvertStats,
                   progress: Progress | None) -> None:
    write_sparse(path, chain.size, block_size, DiskType.DYNAMIC)
    with Layer(LocalFile(path, writable=True), writable=True) as out:
        _parallel_pieces(chain, stats, progress, out.write)
        out.flush()


def _write_vhdx(chain: Chain, path: Path, spec: vhdx_build.NewVhdx, stats: ConvertStats,
                progress: Progress | None) -> None:
    """Through a writable VhdxLayer: blocks with data allocated (dynamic) or written in place
    (fixed), the BAT through the log, the log empty when it closes."""
    vhdx_build.write_new_file(path, spec)
    source = LocalFile(path, writable=True)
    ahead = WritebackAhead(source.fd)
    with VhdxLayer(source, writable=True) as out:
        def write(offset: int, data: memoryview) -> None:
            out.write(offset, data)
            ahead.wrote(len(data))

        _parallel_pieces(chain, stats, progress, write)


def vhdx_spec_for(chain: Chain, *, fixed: bool, block_size: int | None,
                  logical_sector_size: int | None = None) -> vhdx_build.NewVhdx:
    """The VHDX a chain converts into: its size; the top's sector sizes (the guest sees
    them; 4096 physical where the top records none); Hyper-V's block size unless one is given."""
    top = chain.top
    lss, pss = top.logical_sector_size, top.physical_sector_size or 4096
    spec = vhdx_build.NewVhdx(size=chain.size,
                              block_size=block_size or vhdx_build.DEFAULT_BLOCK_SIZE,
                              logical_sector_size=logical_sector_size or lss,
                              physical_sector_size=pss, fixed=fixed)
    vhdx_build.check_new(spec)
    return spec


def skip_free_space(chain: Chain) -> tuple[Chain, FreeSpace, int]:
    """--skip-free (convert and upload): a view of `chain` in which the clusters its file
    systems leave free read as zeros (vhdfs.filesystems.free), so that nothing of them is
    read, written or sent; the map; and how many bytes the chain stores in them (its data
    extents there: what is left out)."""
    free = free_space(chain)
    skipped = 0
    for offset, length in free.ranges:
        skipped += sum(e.length for e in chain.iter_extents(offset, length) if not e.is_zero)
    return chain.with_zeros(free.ranges), free, skipped


def convert(chain: Chain, out: str | os.PathLike[str], to: str, *,
            block_size: int | None = None, fixed: bool = False, force: bool = False,
            progress: Progress | None = None, skip_free: bool = False) -> ConvertStats:
    """Write the chain's flat disk to `out` as `to` (see TARGETS; `fixed` makes a "vhdx"
    output fixed). `block_size`: of dynamic output (default 2M for VHD, 32M for VHDX).
    `skip_free`: the free space of the guest's file systems is written as zeros, unread
    (`skip_free_space`)."""
    if to not in TARGETS:
        raise UsageError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    if fixed and to != "vhdx":
        raise UsageError("--fixed applies to --to vhdx (a fixed VHD is --to fixed)")
    target = Path(out)
    target_identity = identity_of(target)
    for layer in chain.layers:
        if target_identity is not None and layer.source.identity() == target_identity:
            raise RefusedError(f"{target}: is part of the chain being converted; write to "
                               "another file")
    spec = None
    if to == "vhdx":
        spec = vhdx_spec_for(chain, fixed=fixed, block_size=block_size)
    elif to != "raw":
        check_size(chain.size, DiskType.FIXED if to == "fixed" else DiskType.DYNAMIC)
    if to == "dynamic":
        block_size = block_size or DEFAULT_BLOCK_SIZE
        check_block_size(block_size, chain.size)
    stats = ConvertStats(size=chain.size)
    if skip_free:
        chain, stats.free_space, stats.skipped_free = skip_free_space(chain)
    with atomic_output(target, force=force) as tmp:
        if spec is not None:
            _write_vhdx(chain, tmp, spec, stats, progress)
        elif to == "dynamic":
            _write_dynamic(chain, tmp, block_size, stats, progress)
        else:
            footer = fixed_footer(chain.size).build() if to == "fixed" else b""
            _write_flat(chain, tmp, stats, progress, footer)
    if progress:
        progress.finish()
    return stats
