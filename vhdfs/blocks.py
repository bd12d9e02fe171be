"""What the two block formats (VHD, VHDX) share in mapping their disk: the runs of one
partly present block from its sector bitmap, a range cut out of whole blocks' runs, the
bounds every map and write is checked against, and the bound on the bitmaps kept in
memory. Each format keeps its own structures and bit order (vhdfs.vhd.bitmap: MSB first,
vhdfs.vhdx.bitmap: LSB first)."""

from __future__ import annotations

import errno
from collections import OrderedDict
from collections.abc import Callable, Iterable

from vhdfs.errors import ImageIOError
from vhdfs.image import Run, RunKind


def bitmap_block_runs(bit_runs: Iterable[tuple[int, int, bool]], unit: int, start: int,
                      length: int, data_offset: int) -> list[Run]:
    """The runs of a block of `length` bytes at disk offset `start` whose data is at
    `data_offset` in the file, from its bitmap's runs (first sector, count, set) of
    `unit`-byte sectors: set sectors HERE, the rest BELOW (clipped at the block's end)."""
    out = []
    for first, count, here in bit_runs:
        inner = first * unit
        size = min(count * unit, length - inner)
        if here:
            out.append(Run(RunKind.HERE, start + inner, size, data_offset + inner))
        else:
            out.append(Run(RunKind.BELOW, start + inner, size))
    return out


class BitmapCache(OrderedDict[int, bytearray]):
    """The sector bitmaps of recently used blocks, least recently used first: at most
    `limit`, unless the oldest is one `pinned` says must stay (bits the file may not hold
    yet), which keeps the cache larger until a flush. The layer's lock guards it."""

    def __init__(self, limit: int, pinned: Callable[[int], bool]) -> None:
        super().__init__()
        self.limit = limit
        self.pinned = pinned

    def recent(self, block: int) -> bytearray | None:
        """The block's cached bitmap, now the most recently used, or None."""
        cached = self.get(block)
        if cached is not None:
            self.move_to_end(block)
        return cached

    def keep(self, block: int, bitmap: bytearray) -> bytearray:
        """Cache `bitmap` as the block's, unless another thread (or a writer) got there
        first: the bitmap the cache holds for the block."""
        cached = self.get(block)
        if cached is not None:
            return cached
        self[block] = bitmap
        while len(self) > self.limit:
            oldest = next(iter(self))
            if self.pinned(oldest):
                break
            del self[oldest]
        return bitmap


def map_blocks(block_runs: Callable[[int], list[Run]], block_size: int, offset: int,
               length: int) -> list[Run]:
    """The runs covering [offset, offset + length) of a disk whose block `i` has the runs
    `block_runs(i)`, each cut to the range."""
    out: list[Run] = []
    end = offset + length
    block = offset // block_size
    while block * block_size < end:
        for run in block_runs(block):
            lo, hi = max(run.offset, offset), min(run.offset + run.length, end)
            if lo >= hi:
                continue
            file_offset = run.file_offset + (lo - run.offset) if run.kind is RunKind.HERE else -1
            out.append(Run(run.kind, lo, hi - lo, file_offset))
        block += 1
    return out


def check_map_range(name: str, offset: int, length: int, size: int) -> None:
    """Refuse a range to map that is not inside the disk of `size` bytes (EINVAL)."""
    if offset < 0 or length < 0 or offset + length > size:
        raise ImageIOError(f"{name}: range {offset}+{length} is outside the disk "
                           f"of {size} bytes", errno.EINVAL)


def check_write_range(name: str, offset: int, length: int, size: int) -> None:
    """Refuse a write that runs past the end of the disk of `size` bytes (ENOSPC)."""
    if offset < 0 or offset + length > size:
        raise ImageIOError(f"{name}: write of {length} bytes at {offset} runs past the "
                           f"end of the disk ({size} bytes)", errno.ENOSPC)
