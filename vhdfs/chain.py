"""A chain of layers as one flat disk, built on the extent map.

`extents(offset, length)` answers, for any range, which layer provides each part (and at
which file offset) or that it is zeros. Reads, convert, upload, commit and the guest tools
all ask it. Resolved extents are cached per unit of the largest block size, in a bounded
LRU, so memory does not grow with the disk.
"""

from __future__ import annotations

import bisect
import errno
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from vhdfs.errors import ImageIOError
from vhdfs.image import ImageLayer, RunKind

ZERO = -1  # layer index of extents that read as zeros
DEFAULT_UNIT = 2 * 1024 * 1024
EXTENT_CACHE_UNITS = 4096
# Also bounded by the extents it holds: a differencing disk whose bitmaps alternate set and
# clear sectors has one extent per sector (a hostile sparse file costs no disk space for it).
EXTENT_CACHE_EXTENTS = 1 << 19


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int  # virtual disk offset
    length: int
    layer: int  # index into Chain.layers (0 = top), or ZERO
    file_offset: int = -1

    @property
    def is_zero(self) -> bool:
        return self.layer == ZERO


@dataclass(frozen=True)
class ParentLink:
    """How the parent of a layer was found, for `info` and error messages."""

    found_by: str  # "W2ru", "W2ku", "MacX", "parent name", "--search", "--parent"
    hint: str  # the locator or name text that led there
    path: str
    also_tried: tuple[str, ...] = ()


class Chain:
    """Layers top first; layers[-1] is the base."""

    def __init__(self, layers: list[ImageLayer], links: list[ParentLink] | None = None) -> None:
        if not layers:
            raise ValueError("a chain needs at least one layer")
        self.layers = layers
        self.links = links or []
        self.size: int = layers[0].size
        sizes = [layer.block_size for layer in layers if layer.block_size]
        self.unit = max(sizes) if sizes else DEFAULT_UNIT
        self._cache: OrderedDict[int, tuple[list[int], list[Extent]]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_generation = 0  # bumped by every invalidation
        self._cached_extents = 0
        self._write_lock = threading.Lock()
        # Ranges read as zeros whatever the layers hold (a view made by `with_zeros`).
        self._zero_starts: list[int] = []
        self._zero_ends: list[int] = []
        self._view_of: Chain | None = None

    def with_zeros(self, ranges: list[tuple[int, int]]) -> Chain:
        """A read-only view of this chain whose extent map says ZERO over `ranges` ((offset,
        length), sector aligned) whatever the layers hold there: those bytes are neither read
        nor copied by what asks the map (convert and upload --skip-free pass the free space
        of the guest's file systems). The view shares the layers; closing it closes nothing."""
        view = Chain(self.layers, self.links)
        for offset, length in sorted(ranges):
            if length <= 0:
                continue
            if view._zero_ends and offset <= view._zero_ends[-1]:
                view._zero_ends[-1] = max(view._zero_ends[-1], offset + length)
            else:
                view._zero_starts.append(offset)
                view._zero_ends.append(offset + length)
        view._view_of = self
        return view

    @property
    def top(self) -> ImageLayer:
        return self.layers[0]

    @property
    def name(self) -> str:
        """What messages call the disk: its top layer's file (or blob URL)."""
        return self.top.name

    @property
    def writable(self) -> bool:
        return self.top.writable

    @property
    def warnings(self) -> list[str]:
        return [w for layer in self.layers for w in layer.warnings]

    # ---------------------------------------------------------------- the extent map
    def _resolve(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pending = [(0, offset, length)]
        while pending:
            depth, off, size = pending.pop()
            for run in self.layers[depth].map(off, size):
                if run.kind is RunKind.HERE:
                    out.append(Extent(run.offset, run.length, depth, run.file_offset))
                elif run.kind is RunKind.BELOW and depth + 1 < len(self.layers):
                    pending.append((depth + 1, run.offset, run.length))
                else:
                    out.append(Extent(run.offset, run.length, ZERO))
        out.sort(key=lambda e: e.offset)
        merged: list[Extent] = []
        for ext in out:
            if merged:
                last = merged[-1]
                if last.layer == ext.layer and last.offset + last.length == ext.offset and (
                        ext.layer == ZERO or last.file_offset + last.length == ext.file_offset):
                    merged[-1] = Extent(last.offset, last.length + ext.length, last.layer,
                                        last.file_offset)
                    continue
            merged.append(ext)
        return self._cut_zeros(merged) if self._zero_starts else merged

    def _cut_zeros(self, extents: list[Extent]) -> list[Extent]:
        """`extents` with the view's zero ranges as ZERO extents (adjacent ZEROs merged)."""
        out: list[Extent] = []

        def put(ext: Extent) -> None:
            if out and ext.layer == ZERO and out[-1].layer == ZERO:
                last = out[-1]
                out[-1] = Extent(last.offset, last.length + ext.length, ZERO)
            else:
                out.append(ext)

        for ext in extents:
            pos, end = ext.offset, ext.offset + ext.length
            if ext.layer == ZERO:
                put(ext)
                continue
            i = max(bisect.bisect_right(self._zero_starts, pos) - 1, 0)
            while pos < end:
                if i < len(self._zero_starts) and self._zero_ends[i] <= pos:
                    i += 1
                    continue
                start = self._zero_starts[i] if i < len(self._zero_starts) else end
                if start > pos:  # data up to the next zero range
                    stop = min(start, end)
                    put(Extent(pos, stop - pos, ext.layer, ext.file_offset + pos - ext.offset))
                    pos = stop
                    continue
                stop = min(self._zero_ends[i], end)
                put(Extent(pos, stop - pos, ZERO))
                pos = stop
        return out

    def _unit_extents(self, unit: int) -> tuple[list[int], list[Extent]]:
        with self._cache_lock:
            hit = self._cache.get(unit)
            if hit is not None:
                self._cache.move_to_end(unit)
                return hit
            generation = self._cache_generation
        start = unit * self.unit
        extents = self._resolve(start, min(self.unit, self.size - start))
        entry = ([e.offset for e in extents], extents)
        with self._cache_lock:
            if generation != self._cache_generation:
                # A write landed while this was resolved (another thread): the result may
                # predate it, so it answers this read but is not cached.
                return entry
            replaced = self._cache.pop(unit, None)
            if replaced is not None:
                self._cached_extents -= len(replaced[1])
            self._cache[unit] = entry
            self._cached_extents += len(extents)
            while len(self._cache) > 1 and (len(self._cache) > EXTENT_CACHE_UNITS
                                            or self._cached_extents > EXTENT_CACHE_EXTENTS):
                _, (_, dropped) = self._cache.popitem(last=False)
                self._cached_extents -= len(dropped)
        return entry

    def _invalidate(self, offset: int, length: int) -> None:
        first, last = offset // self.unit, (offset + length - 1) // self.unit
        with self._cache_lock:
            self._cache_generation += 1
            for unit in range(first, last + 1):
                dropped = self._cache.pop(unit, None)
                if dropped is not None:
                    self._cached_extents -= len(dropped[1])

    def extents(self, offset: int = 0, length: int | None = None) -> list[Extent]:
        """Extents covering [offset, offset + length), in order, adjacent ones merged."""
        return list(self.iter_extents(offset, length))

    def iter_extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        if length is None:
            length = self.size - offset
        self._check_range(offset, length)
        end = offset + length
        pending: Extent | None = None
        unit = offset // self.unit
        while unit * self.unit < end:
            starts, extents = self._unit_extents(unit)
            i = max(bisect.bisect_right(starts, offset) - 1, 0)
            for ext in extents[i:]:
                lo, hi = max(ext.offset, offset), min(ext.offset + ext.length, end)
                if lo >= end:
                    break
                if lo >= hi:
                    continue
                fo = ext.file_offset + (lo - ext.offset) if ext.layer != ZERO else -1
                piece = Extent(lo, hi - lo, ext.layer, fo)
                if pending is not None and pending.layer == piece.layer and (
                        pending.offset + pending.length == piece.offset) and (
                        piece.layer == ZERO or pending.file_offset + pending.length == fo):
                    pending = Extent(pending.offset, pending.length + piece.length, pending.layer,
                                     pending.file_offset)
                    continue
                if pending is not None:
                    yield pending
                pending = piece
            unit += 1
        if pending is not None:
            yield pending

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.top.name}: range {offset}+{length} is outside the disk "
                               f"of {self.size} bytes", errno.EINVAL)

    # ---------------------------------------------------------------- bytes
    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the flat disk (clipped at its end)."""
        if offset >= self.size or length <= 0:
            return b""
        length = min(length, self.size - offset)
        buf = bytearray(length)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, offset: int, view: memoryview, extents: list[Extent] | None = None) -> None:
        """Fill `view` with the flat disk's bytes at `offset`; `view` must be zeroed already
        (a fresh bytearray is): ZERO extents are skipped, not written."""
        for ext in extents if extents is not None else self.iter_extents(offset, len(view)):
            if ext.layer != ZERO:
                start = ext.offset - offset
                self.layers[ext.layer].read_into(ext.file_offset, view[start:start + ext.length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write into the top layer; partial sectors are merged with what the chain shows."""
        if self._view_of is not None:
            raise ImageIOError(f"{self.top.name}: a view with zero ranges is read-only")
        length = len(data)
        if length == 0:
            return
        if offset < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.top.name}: write of {length} bytes at {offset} runs past "
                               f"the end of the disk ({self.size} bytes)", errno.ENOSPC)
        sector = self.top.sector_size  # 512, or a 4 KiB logical sector of a VHDX child
        start = offset - offset % sector
        end = -(-(offset + length) // sector) * sector
        # One writer at a time: a partial-sector write reads, merges and writes back, and
        # must not interleave with another write to the same sector.
        with self._write_lock:
            if start != offset or end != offset + length:
                buf = bytearray(end - start)
                buf[:sector] = self.read(start, sector)
                buf[-sector:] = self.read(end - sector, sector)
                buf[offset - start:offset - start + length] = data
                data = buf
            try:
                self.top.write(start, data)
            finally:
                self._invalidate(start, end - start)

    def flush(self) -> None:
        self.top.flush()

    def close(self) -> None:
        if self._view_of is not None:
            return  # the layers belong to the chain the view was made of
        try:
            if self.writable:
                self.top.close()  # flushes (and leaves a VHDX's log empty: a clean close)
        finally:
            for layer in self.layers:
                try:
                    layer.source.close()
                except OSError:
                    pass

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
