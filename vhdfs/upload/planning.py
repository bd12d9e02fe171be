"""What an upload writes: page writes of at most 4 MiB, only of pages that hold data.

The blob is taken in aligned 4 MiB windows. For each window that holds anything to send,
the planner says which stretches to read (`Window.spans`) and how (`Window.fill`); a worker
thread reads them, finds the pages with a non-zero byte (vhdfs.upload.pages: a page blob
reads pages never written as zeros) and makes the window's writes, each with the SHA-256
of its bytes. Several windows are read, checked and hashed at once (pread and hashlib
release the GIL; the zero check costs well under a millisecond per window), and their writes
come out in order. A write never crosses a window boundary, so no write exceeds 4 MiB and
the writes of a source do not depend on how many threads made them.

  - `flat_writes`: the flat disk of a chain (its data extents, as `vhdfs.convert.data_windows`
    finds them), then the fixed-VHD footer;
  - `patch_writes`: only what layers above the base hold (layer index < `upto`): their data
    pages, and page clears where they hold zeros over pages the base blob has written (a
    zero sector of the child over the base's data must read as zero; over a base page never
    written there is nothing to clear); on top of a copy of the base, they make the
    flattened chain;
  - `file_writes`: any file as it is (the non-zero pages of its data ranges).

Pure functions of the extent map and local files, checked against an in-memory model.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vhdfs.chain import Chain
from vhdfs.convert import data_windows
from vhdfs.progress import Progress
from vhdfs.sources.local import LocalFile
from vhdfs.upload.pages import PAGE, Runs, nonzero_pages, overlap, zero_gaps

MAX_WRITE = 4 * 1024 * 1024  # Azure's Put Page limit; Azurite does not enforce it, we do
WINDOW = MAX_WRITE  # the unit of reading, zero detection and hashing
# Windows read, checked and hashed at once: pread and hashlib release the GIL, so one
# thread per core keeps the senders fed; more only contend.
READERS = max(2, min(4, os.cpu_count() or 2))
_ZERO_CHUNK = bytes(MAX_WRITE)


@dataclass(frozen=True, slots=True)
class Write:
    offset: int
    length: int
    data: bytes | None  # None: clear the pages (they must read as zeros)
    sha256: bytes = b""  # of the bytes written (zeros for a clear); b"": not computed yet

    @property
    def end(self) -> int:
        return self.offset + self.length


@functools.lru_cache(maxsize=64)
def _zeros_hash(length: int) -> bytes:
    digest = hashlib.sha256()
    left = length
    while left:
        n = min(left, len(_ZERO_CHUNK))
        digest.update(memoryview(_ZERO_CHUNK)[:n])
        left -= n
    return digest.digest()


def range_hash(write: Write) -> bytes:
    """The SHA-256 of what `write` leaves in the blob."""
    if write.sha256:
        return write.sha256
    if write.data is not None:
        return hashlib.sha256(write.data).digest()
    return _zeros_hash(write.length)


def data_write(offset: int, data: bytes) -> Write:
    """A write of `data` (a whole number of pages) with its hash."""
    if offset % PAGE or len(data) % PAGE:
        raise ValueError(f"internal: a write of {len(data)} bytes at {offset} is not page aligned")
    return Write(offset, len(data), data, hashlib.sha256(data).digest())


@dataclass(frozen=True)
class Window:
    """One aligned window of the blob: what to read into it and what may need clearing."""

    offset: int
    length: int
    spans: Runs  # blob offsets [lo, hi) to read and check, sorted, inside the window
    fill: Callable[[memoryview], None]  # reads the spans into a zeroed buffer of `length`
    clear_under: Runs | None = None  # zero pages inside these (blob offsets) are cleared


def window_writes(window: Window) -> list[Write]:
    """Read one window, find its data pages, and make its writes (hashed), in order."""
    buf = bytearray(window.length)
    window.fill(memoryview(buf))
    at = window.offset
    data: Runs = []  # offsets into buf
    zeros: Runs = []  # blob offsets
    for lo, hi in window.spans:
        found = nonzero_pages(buf, lo - at, hi - at)
        if window.clear_under:
            zeros += [(at + a, at + b) for a, b in zero_gaps(lo - at, hi - at, found)]
        for a, b in found:  # adjacent spans (extents of two layers) make one write
            if data and data[-1][1] == a:
                data[-1] = (data[-1][0], b)
            else:
                data.append((a, b))
    view = memoryview(buf)  # one copy of each write's bytes, not two (a slice, then bytes)
    writes = [data_write(at + a, _padded(view[a:b])) for a, b in data]
    if zeros and window.clear_under:
        clears = [Write(a, b - a, None, _zeros_hash(b - a))
                  for a, b in overlap(zeros, window.clear_under)]
        writes = sorted(writes + clears, key=lambda w: w.offset)
    return writes


def _padded(piece: memoryview) -> bytes:
    tail = len(piece) % PAGE
    return bytes(piece) + bytes(PAGE - tail) if tail else bytes(piece)


def in_order(windows: Iterable[Window], progress: Progress | None = None,
             readers: int = READERS) -> Iterator[Write]:
    """The writes of every window, in order, `readers` windows at a time (a bounded number
    ahead, so memory stays at a few windows)."""
    pool = ThreadPoolExecutor(readers, thread_name_prefix="vhdfs-read")
    pending: deque[tuple[Window, Future[list[Write]]]] = deque()
    try:
        for window in windows:
            pending.append((window, pool.submit(window_writes, window)))
            while len(pending) > 2 * readers:
                yield from _take(pending, progress)
        while pending:
            yield from _take(pending, progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take(pending: deque, progress: Progress | None) -> list[Write]:
    window, future = pending.popleft()
    writes = future.result()
    if progress:
        progress.advance(window.length)
    return writes


def flat_writes(chain: Chain, footer: bytes, progress: Progress | None = None,
                readers: int = READERS) -> Iterator[Write]:
    """The flat disk's data pages, then the footer."""

    def windows() -> Iterator[Window]:
        for found in data_windows(chain, progress):
            extents = found.extents
            spans = [(e.offset, e.offset + e.length) for e in extents]

            def fill(view: memoryview, at: int = found.offset, extents: list = extents) -> None:
                chain.read_into(at, view, extents)

            yield Window(found.offset, found.length, spans, fill)

    yield from in_order(windows(), progress, readers)
    yield data_write(chain.size, footer)


def patch_writes(chain: Chain, upto: int, footer: bytes, base_pages: Callable[[int, int], Runs],
                 progress: Progress | None = None, readers: int = READERS) -> Iterator[Write]:
    """What layers 0 .. upto-1 hold: their data pages, and clears of their zero pages where
    `base_pages(start, end)` (the base blob's written pages) says the base has data; then
    the footer."""

    def windows() -> Iterator[Window]:
        for offset in range(0, chain.size, WINDOW):
            length = min(WINDOW, chain.size - offset)
            extents = [e for e in chain.iter_extents(offset, length)
                       if not e.is_zero and e.layer < upto]
            if not extents:
                if progress:
                    progress.advance(length)
                continue
            spans = [(e.offset, e.offset + e.length) for e in extents]

            def fill(view: memoryview, at: int = offset, extents: list = extents) -> None:
                chain.read_into(at, view, extents)

            yield Window(offset, length, spans, fill, base_pages(offset, offset + length))

    yield from in_order(windows(), progress, readers)
    yield data_write(chain.size, footer)


def file_writes(source: LocalFile, progress: Progress | None = None,
                readers: int = READERS) -> Iterator[Write]:
    """A file as it is: the non-zero pages of its data ranges (holes are never read)."""
    size = source.size()

    def windows() -> Iterator[Window]:
        ranges = source.data_ranges(0, size)
        i = 0
        for offset in range(0, size, WINDOW):
            end = min(offset + WINDOW, size)
            spans: Runs = []
            while i < len(ranges) and ranges[i][0] < end:
                lo, hi = max(ranges[i][0], offset), min(ranges[i][1], end)
                if lo < hi:
                    spans.append((lo, hi))
                if ranges[i][1] > end:
                    break
                i += 1
            if not spans:
                if progress:
                    progress.advance(end - offset)
                continue

            def fill(view: memoryview, at: int = offset, spans: Runs = spans) -> None:
                for lo, hi in spans:
                    source.read_into(lo, view[lo - at:hi - at])

            yield Window(offset, end - offset, spans, fill)

    yield from in_order(windows(), progress, readers)


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
