"""Flatten a chain into a raw image, a fixed VHD or a dynamic VHD (or import a raw image).

Only extents that hold data are read; ZERO extents cost nothing. Within data, all-zero
pieces are not written either, so raw output stays sparse and dynamic output allocates
only blocks that hold something.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vhdfs.chain import Chain
from vhdfs.create import (
    DEFAULT_BLOCK_SIZE,
    atomic_output,
    check_block_size,
    check_size,
    fixed_footer,
    write_sparse,
)
from vhdfs.errors import ImageIOError, RefusedError, UsageError
from vhdfs.format.footer import DiskType
from vhdfs.layer import SECTOR, Layer
from vhdfs.progress import Progress
from vhdfs.sources.local import LocalFile

TARGETS = ("raw", "fixed", "dynamic")
READ_CHUNK = 4 * 1024 * 1024
ZERO_GRAIN = 64 * 1024
_ZEROS = bytes(READ_CHUNK)


@dataclass
class ConvertStats:
    size: int = 0
    data_read: int = 0
    data_written: int = 0


def nonzero_pieces(data: bytes, grain: int = ZERO_GRAIN) -> Iterator[tuple[int, int]]:
    """(start, end) of the parts of `data` that are not all zeros, at `grain` resolution."""
    if data == _ZEROS[:len(data)]:
        return
    view = memoryview(data)
    start = None
    for pos in range(0, len(data), grain):
        piece = view[pos:pos + grain]
        if piece == _ZEROS[:len(piece)]:
            if start is not None:
                yield start, pos
                start = None
        elif start is None:
            start = pos
    if start is not None:
        yield start, len(data)


def data_pieces(chain: Chain, stats: ConvertStats,
                progress: Progress | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of every non-zero piece of the flat disk, in order."""
    for ext in chain.iter_extents():
        if ext.is_zero:
            if progress:
                progress.advance(ext.length)
            continue
        layer = chain.layers[ext.layer]
        done = 0
        while done < ext.length:
            n = min(READ_CHUNK, ext.length - done)
            data = layer.read_data(ext.file_offset + done, n)
            stats.data_read += n
            for lo, hi in nonzero_pieces(data):
                yield ext.offset + done + lo, data[lo:hi]
            done += n
            if progress:
                progress.advance(n)


def _write_flat(chain: Chain, path: Path, stats: ConvertStats, progress: Progress | None,
                footer: bytes = b"") -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, chain.size + len(footer))
        for offset, data in data_pieces(chain, stats, progress):
            _pwrite_all(fd, data, offset, path)
            stats.data_written += len(data)
        if footer:
            _pwrite_all(fd, footer, chain.size, path)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int, path: Path) -> None:
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
        for offset, data in data_pieces(chain, stats, progress):
            start = offset - offset % SECTOR
            end = -(-(offset + len(data)) // SECTOR) * SECTOR
            if start != offset or end != offset + len(data):
                data = chain.read(start, end - start)  # a piece ending mid-sector (raw input)
            out.write(start, data)
            stats.data_written += len(data)
        out.flush()


def convert(chain: Chain, out: str | os.PathLike[str], to: str, *,
            block_size: int = DEFAULT_BLOCK_SIZE, force: bool = False,
            progress: Progress | None = None) -> ConvertStats:
    if to not in TARGETS:
        raise UsageError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    target = Path(out)
    for layer in chain.layers:
        name = getattr(layer.source, "path", None)
        if name is not None and target.exists() and target.resolve() == Path(name).resolve():
            raise RefusedError(f"{target}: is part of the chain being converted; write to "
                               "another file")
    if to != "raw":
        check_size(chain.size, DiskType.FIXED if to == "fixed" else DiskType.DYNAMIC)
    if to == "dynamic":
        check_block_size(block_size)
    stats = ConvertStats(size=chain.size)
    with atomic_output(target, force=force) as tmp:
        if to == "dynamic":
            _write_dynamic(chain, tmp, block_size, stats, progress)
        else:
            footer = fixed_footer(chain.size).build() if to == "fixed" else b""
            _write_flat(chain, tmp, stats, progress, footer)
    if progress:
        progress.finish()
    return stats
