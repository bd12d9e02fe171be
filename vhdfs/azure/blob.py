"""An Azure page blob as a read-only source: lazy ranged reads through a bounded block cache.

Reads are served in aligned blocks (256 KiB) from a bounded LRU cache. Missing blocks are
fetched with ranged GETs of at most 4 MiB, several at once when a read spans more; a block
being fetched by one thread is waited for, not fetched again, by the others. Sequential reads
grow a read-ahead window (up to 8 MiB) fetched in the background. Blocks that the blob's page
ranges say were never written are zeros without any request. Retries and error messages are
the client's (vhdfs.azure.client).

vhdfs.resolve.open_source sends blob specs (https://..., http://HOST/ACCOUNT/...,
az://CONTAINER/BLOB) here; the Azure SDK itself is imported only when one is opened.
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from vhdfs.azure.credentials import Credential, parse_location
from vhdfs.azure.location import BlobLocation
from vhdfs.errors import ImageIOError, RefusedError
from vhdfs.sources.base import Source

if TYPE_CHECKING:
    from vhdfs.azure.pageblob import PageBlob

BLOCK = 256 * 1024
CACHE_BYTES = 64 * 1024 * 1024
MAX_GET = 4 * 1024 * 1024
READ_AHEAD_MAX = 8 * 1024 * 1024
FETCH_THREADS = 8
SECTOR = 512

Fetch = Callable[[int, int], bytes]
DataRanges = Callable[[int, int], list[tuple[int, int]]]


class RangeCache:
    """Aligned-block cache over `fetch(offset, length)` for an object of `size` bytes."""

    def __init__(self, name: str, size: int, fetch: Fetch, *, data_ranges: DataRanges | None = None,
                 block: int = BLOCK, capacity: int = CACHE_BYTES, max_get: int = MAX_GET,
                 read_ahead_max: int = READ_AHEAD_MAX, workers: int = FETCH_THREADS) -> None:
        self.name = name
        self.size = size
        self._fetch = fetch
        self._data_ranges = data_ranges
        self.block = block
        self.capacity_blocks = max(1, capacity // block)
        self.blocks_per_get = max(1, max_get // block)
        self.read_ahead_blocks = read_ahead_max // block
        self._workers = workers
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._inflight: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._next_offset = -1
        self._window = 0
        self._ahead_until = -1  # the last block read-ahead has asked for
        self.fetches = 0  # GETs made (for tests)
        self.bytes_fetched = 0
        self._closed = False
        _caches.add(self)

    # ------------------------------------------------------------------ reading
    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if offset < 0 or offset + length > self.size:
            raise ImageIOError(
                f"{self.name}: reading {length} bytes at offset {offset} runs past the end of the "
                f"blob ({self.size} bytes): the blob is shorter than its metadata says", errno.EIO)
        first, last = offset // self.block, (offset + length - 1) // self.block
        got = self._get(first, last)
        if first == last:
            start = offset - first * self.block
            data = got[first][start:start + length]
        else:
            joined = b"".join(got[i] for i in range(first, last + 1))
            start = offset - first * self.block
            data = joined[start:start + length]
        self._read_ahead(offset, length, last)
        return data

    def _get(self, first: int, last: int) -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        waits: dict[int, Future] = {}
        mine: dict[int, Future] = {}
        with self._lock:
            for index in range(first, last + 1):
                data = self._blocks.get(index)
                if data is not None:
                    self._blocks.move_to_end(index)
                    got[index] = data
                elif index in self._inflight:
                    waits[index] = self._inflight[index]
                else:
                    mine[index] = self._inflight[index] = Future()
        runs = self._runs(sorted(mine))
        if runs:
            others = [self._pool_submit(run) for run in runs[1:]]
            error: BaseException | None = None
            try:
                self._load(runs[0])
            except BaseException as exc:  # wait for the others before raising
                error = exc
            for future in others:
                try:
                    future.result()
                except BaseException as exc:
                    error = error or exc
            if error is not None:
                raise error
        for index, future in {**mine, **waits}.items():
            got[index] = future.result()
        return got

    def _runs(self, indexes: list[int]) -> list[tuple[int, int]]:
        """Contiguous (first block, count) runs of at most blocks_per_get blocks."""
        runs: list[tuple[int, int]] = []
        for index in indexes:
            if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < self.blocks_per_get:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((index, 1))
        return runs

    def _pool_submit(self, run: tuple[int, int]) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="vhdfs-blob")
            pool = self._pool
        return pool.submit(self._load, run)

    def _load(self, run: tuple[int, int]) -> None:
        """Fetch one run of blocks, fill the cache and complete their futures."""
        first, count = run
        indexes = range(first, first + count)
        try:
            offset = first * self.block
            length = min(count * self.block, self.size - offset)
            data = self._fetch_trimmed(offset, length)
        except BaseException as exc:
            with self._lock:
                for index in indexes:
                    future = self._inflight.pop(index, None)
                    if future is not None:
                        future.set_exception(exc)
            raise
        with self._lock:
            for k, index in enumerate(indexes):
                piece = data[k * self.block:(k + 1) * self.block]
                self._blocks[index] = piece
                self._blocks.move_to_end(index)
                future = self._inflight.pop(index, None)
                if future is not None:
                    future.set_result(piece)
            while len(self._blocks) > self.capacity_blocks:
                self._blocks.popitem(last=False)

    def _fetch_trimmed(self, offset: int, length: int) -> bytes:
        """The bytes of [offset, offset + length), skipping the parts no page was written to."""
        end = offset + length
        lo, hi = offset, end
        if self._data_ranges is not None:
            ranges = self._data_ranges(offset, end)
            if not ranges:
                return bytes(length)
            lo = max(offset, ranges[0][0] // SECTOR * SECTOR)
            hi = min(end, -(-ranges[-1][1] // SECTOR) * SECTOR)
        data = self._fetch(lo, hi - lo)
        with self._lock:
            self.fetches += 1
            self.bytes_fetched += hi - lo
        if lo == offset and hi == end:
            return data
        return bytes(lo - offset) + data + bytes(end - hi)

    # ------------------------------------------------------------------ read-ahead
    def _read_ahead(self, offset: int, length: int, last: int) -> None:
        """On sequential reads, keep up to `_window` blocks requested ahead of the reader; top
        up only once half of them are consumed, so the GETs stay large."""
        with self._lock:
            sequential = offset == self._next_offset
            self._next_offset = offset + length
            if not sequential or self.read_ahead_blocks == 0 or self._closed:
                self._window = 0
                self._ahead_until = last
                return
            self._window = min(max(self._window * 2, 2), self.read_ahead_blocks)
            if self._ahead_until - last > self._window // 2:
                return
            wanted = []
            first = max(last, self._ahead_until) + 1
            top = min(last + self._window, (self.size - 1) // self.block)
            for index in range(first, top + 1):
                if index not in self._blocks and index not in self._inflight:
                    self._inflight[index] = Future()
                    wanted.append(index)
            self._ahead_until = max(self._ahead_until, top)
        for run in self._runs(wanted):
            future = self._pool_submit(run)
            # Errors of a read-ahead reach the reader that waits for those blocks, if any.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._blocks.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_caches: weakref.WeakSet[RangeCache] = weakref.WeakSet()
FORK_WAIT = 30.0


def _before_fork() -> None:
    """Let running fetches finish: a thread inside a request at the fork would leave the
    child with a lock held forever (`vhdfs mount` forks its daemon after opening a chain)."""
    for cache in list(_caches):
        with cache._lock:
            pending = list(cache._inflight.values())
        for future in pending:
            try:
                future.result(timeout=FORK_WAIT)
            except BaseException:  # the reader that wants these blocks sees the error
                pass


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._lock = threading.Lock()
        cache._pool = None  # its threads stayed in the parent
        cache._inflight = {}


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class BlobSource(Source):
    """A page blob, read-only, through a RangeCache."""

    remote = True
    writable = False

    def __init__(self, location: BlobLocation, credential: Credential | None = None) -> None:
        from vhdfs.azure.pageblob import PageBlob  # the Azure SDK only once a blob is opened

        self.location = location
        self.name = location.display
        self.blob: PageBlob = PageBlob(location, credential).open()
        self.metadata = self.blob.metadata
        self._cache = RangeCache(self.name, self.blob.size, self.blob.fetch,
                                 data_ranges=self.blob.data_ranges)

    @property
    def credential(self) -> Credential:
        return self.blob.credential

    def size(self) -> int:
        return self.blob.size

    def read_at(self, offset: int, length: int) -> bytes:
        return self._cache.read(offset, length)

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        return self.blob.data_ranges(start, min(end, self.blob.size))

    def version_stamp(self) -> tuple[int, float, str]:
        """The blob as opened: its size, last write and ETag (reads are pinned to it)."""
        modified = self.blob.properties.last_modified
        return self.blob.size, modified.timestamp(), f"{self.blob.size}:{self.blob.etag}"

    def identity(self) -> tuple:
        return self.location.identity()

    def close(self) -> None:
        self._cache.close()
        self.blob.close()


def open_blob_spec(spec: str, writable: bool = False) -> BlobSource:
    """The BlobSource of a blob spec (vhdfs.resolve.open_source sends blob specs here)."""
    location = parse_location(spec)
    if writable:
        raise RefusedError(f"{location.display}: page blobs are opened read-only; work on a local "
                           "copy (vhdfs convert) and upload it with vhdfs upload")
    return BlobSource(location)

