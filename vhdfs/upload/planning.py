"""What an upload writes: page-aligned writes of at most 4 MiB, only where data is.

Pure functions over the extent map and local files, so they can be checked against an
in-memory model without a server:
  - `flat_writes`: the flat disk of a chain (only non-zero 64 KiB grains of data extents,
    as `vhdfs.convert.data_pieces` finds them) followed by the fixed-VHD footer;
  - `patch_writes`: only what layers above the base hold (layer index < `upto`), zeros
    included (as page clears): on top of a copy of the base, they make the flattened chain;
  - `file_writes`: any file as it is (non-zero grains of its data ranges).
Adjacent pieces are merged into writes of at most `MAX_WRITE` bytes; adjacent clears into one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vhdfs.chain import Chain
from vhdfs.convert import ConvertStats, data_pieces
from vhdfs.progress import Progress
from vhdfs.sources.local import LocalFile

PAGE = 512
MAX_WRITE = 4 * 1024 * 1024  # Azure's Put Page limit; Azurite does not enforce it, we do
READ_CHUNK = 4 * 1024 * 1024
ZERO_GRAIN = 64 * 1024  # as vhdfs.convert: all-zero grains inside data are not sent
_ZERO_CHUNK = bytes(MAX_WRITE)


def nonzero_pieces(data: bytes, grain: int = ZERO_GRAIN) -> Iterator[tuple[int, int]]:
    """(start, end) of the parts of `data` that are not all zeros, at `grain` resolution
    (grains counted from the start of `data`). Compares bytes slices: memoryview comparison
    is about 30 times slower."""
    if len(data) <= len(_ZERO_CHUNK) and data == _ZERO_CHUNK[:len(data)]:
        return
    zero = _ZERO_CHUNK[:grain]
    start = None
    for pos in range(0, len(data), grain):
        piece = data[pos:pos + grain]
        if piece == (zero if len(piece) == grain else bytes(len(piece))):
            if start is not None:
                yield start, pos
                start = None
        elif start is None:
            start = pos
    if start is not None:
        yield start, len(data)


@dataclass(frozen=True, slots=True)
class Write:
    offset: int
    length: int
    data: bytes | None  # None: clear the pages (they must read as zeros)

    @property
    def end(self) -> int:
        return self.offset + self.length


def _padded(offset: int, data: bytes) -> bytes:
    if offset % PAGE:
        raise ValueError(f"internal: a piece at offset {offset} is not 512-byte aligned")
    tail = len(data) % PAGE
    return data + bytes(PAGE - tail) if tail else data


def coalesce(items: Iterable[Write], limit: int = MAX_WRITE) -> Iterator[Write]:
    """Merge adjacent writes of the same kind; data writes never exceed `limit` bytes."""
    buf = bytearray()
    start = -1
    clear: Write | None = None
    for item in items:
        if item.length == 0:
            continue
        if item.data is None:
            if buf:
                yield from _flush(start, buf, limit)
                buf = bytearray()
            if clear is not None and clear.end == item.offset:
                clear = Write(clear.offset, clear.length + item.length, None)
            else:
                if clear is not None:
                    yield clear
                clear = Write(item.offset, item.length, None)
            continue
        if clear is not None:
            yield clear
            clear = None
        data = _padded(item.offset, item.data)
        if buf and start + len(buf) == item.offset:
            buf += data
        else:
            if buf:
                yield from _flush(start, buf, limit)
            buf = bytearray(data)
            start = item.offset
        while len(buf) >= limit:
            yield Write(start, limit, bytes(buf[:limit]))
            del buf[:limit]
            start += limit
    if clear is not None:
        yield clear
    if buf:
        yield from _flush(start, buf, limit)


def _flush(start: int, buf: bytearray, limit: int) -> Iterator[Write]:
    for pos in range(0, len(buf), limit):
        piece = bytes(buf[pos:pos + limit])
        yield Write(start + pos, len(piece), piece)


def flat_writes(chain: Chain, footer: bytes, progress: Progress | None = None,
                stats: ConvertStats | None = None) -> Iterator[Write]:
    stats = stats or ConvertStats(size=chain.size)
    pieces = (Write(off, len(data), data) for off, data in data_pieces(chain, stats, progress))
    yield from coalesce(pieces)
    yield Write(chain.size, len(footer), footer)


def patch_writes(chain: Chain, upto: int, footer: bytes, progress: Progress | None = None
                 ) -> Iterator[Write]:
    """Everything layers 0 .. upto-1 hold (data and zeros), then the footer."""

    def pieces() -> Iterator[Write]:
        for ext in chain.iter_extents():
            if ext.is_zero or ext.layer >= upto:
                if progress:
                    progress.advance(ext.length)
                continue
            layer = chain.layers[ext.layer]
            done = 0
            while done < ext.length:
                n = min(READ_CHUNK, ext.length - done)
                data = layer.read_data(ext.file_offset + done, n)
                base = ext.offset + done
                pos = 0
                for lo, hi in nonzero_pieces(data):
                    if lo > pos:
                        yield Write(base + pos, lo - pos, None)
                    yield Write(base + lo, hi - lo, data[lo:hi])
                    pos = hi
                if pos < n:
                    yield Write(base + pos, n - pos, None)
                done += n
                if progress:
                    progress.advance(n)

    yield from coalesce(pieces())
    yield Write(chain.size, len(footer), footer)


def file_writes(source: LocalFile, progress: Progress | None = None) -> Iterator[Write]:
    """A file as it is: the non-zero grains of its data ranges (holes are never read)."""
    size = source.size()

    def pieces() -> Iterator[Write]:
        pos = 0
        for lo, hi in source.data_ranges(0, size):
            if progress and lo > pos:
                progress.advance(lo - pos)
            at = lo
            while at < hi:
                n = min(READ_CHUNK, hi - at)
                data = source.read_at(at, n)
                for a, b in nonzero_pieces(data):
                    yield Write(at + a, b - a, data[a:b])
                at += n
                if progress:
                    progress.advance(n)
            pos = hi
        if progress and size > pos:
            progress.advance(size - pos)

    yield from coalesce(pieces())


def range_hash(write: Write) -> bytes:
    if write.data is not None:
        return hashlib.sha256(write.data).digest()
    digest = hashlib.sha256()
    left = write.length
    while left:
        n = min(left, len(_ZERO_CHUNK))
        digest.update(memoryview(_ZERO_CHUNK)[:n])
        left -= n
    return digest.digest()


class RangeDigest:
    """sha256 over every written range, in order: 8-byte offset, 8-byte length (big-endian)
    and the sha256 of its bytes (zeros for a clear). Recorded in the blob's metadata and
    recomputed from the blob by --verify."""

    def __init__(self, keep_ranges: bool = False) -> None:
        self._sha = hashlib.sha256()
        self.ranges: list[tuple[int, int, bytes]] | None = [] if keep_ranges else None
        self.count = 0
        self.data_bytes = 0

    def add(self, write: Write) -> None:
        digest = range_hash(write)
        self._sha.update(write.offset.to_bytes(8, "big") + write.length.to_bytes(8, "big") + digest)
        self.count += 1
        if write.data is not None:
            self.data_bytes += write.length
        if self.ranges is not None:
            self.ranges.append((write.offset, write.length, digest))

    def hexdigest(self) -> str:
        return "sha256:" + self._sha.hexdigest()
