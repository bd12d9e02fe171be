"""An Azure page blob as a read-only source: lazy ranged reads through a bounded block cache.

Reads are served in aligned blocks (256 KiB) from a bounded LRU cache. Missing blocks are
fetched with ranged GETs of at most 4 MiB, several at once when a read spans more; a block
being fetched by one thread is waited for, not fetched again, by the others. A sequential
reader gets a read-ahead that keeps up to 8 GETs in flight over the blocks that hold data,
with a window that grows while the reader waits (RangeCache). Blocks that the blob's page
ranges say were never written are zeros without any request. With the persistent cache on
(vhdfs.azure.blockcache), blocks are looked for there first. Retries and error messages are
the client's (vhdfs.azure.client).

vhdfs.resolve.open_source sends blob specs (https://..., http://HOST/ACCOUNT/...,
az://CONTAINER/BLOB) here; the Azure SDK itself is imported only when one is opened.
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vhdfs.azure import blockcache
from vhdfs.azure.credentials import Credential, parse_location
from vhdfs.azure.location import BlobLocation
from vhdfs.azure.stats import TRANSFER
from vhdfs.errors import ImageIOError, RefusedError
from vhdfs.sources.base import Source

if TYPE_CHECKING:
    from vhdfs.azure.pageblob import PageBlob

BLOCK = 256 * 1024
CACHE_BYTES = 64 * 1024 * 1024
MAX_GET = 4 * 1024 * 1024
FETCH_THREADS = 8
# Read-ahead keeps up to FETCH_THREADS GETs of up to MAX_GET in flight (32 MiB: half the
# cache, so that what was fetched ahead stays until it is read).
READ_AHEAD_MAX = FETCH_THREADS * MAX_GET
SCAN_AHEAD = 4096  # blocks (1 GiB): how far one top-up looks past holes for data to fetch
SECTOR = 512

Fetch = Callable[[int, int], bytes]
DataRanges = Callable[[int, int], list[tuple[int, int]]]


class BlockStore(Protocol):
    """Where blocks may be kept between commands (vhdfs.azure.blockcache.BlobStore)."""

    def get(self, index: int) -> bytes | None: ...

    def put(self, index: int, data: bytes) -> None: ...


@dataclass
class Stream:
    """The sequential reader a cache follows: where it is and what was requested ahead."""

    end: int = -1  # where its last read ended
    frontier: int = 0  # the first block read-ahead has not planned yet
    window: int = 0  # blocks to keep requested ahead of it (0: not reading sequentially)
    runs: deque[tuple[int, int]] = field(default_factory=deque)  # planned, not passed yet
    planning: bool = False  # a thread is planning the next GETs
    generation: int = 0  # advanced when the reader jumps: plans of before are not recorded


class RangeCache:
    """Aligned-block cache over `fetch(offset, length)` for an object of `size` bytes.

    Reads are served from a bounded LRU of blocks. Missing blocks are fetched in runs of up
    to `max_get` (the first run in the reader's thread, the others in the pool), skipping
    blocks that `data_ranges` says hold no data (zeros, no request); a block in flight is
    waited for, never fetched twice. With a `store` (the persistent cache), blocks are
    looked for there before any GET and put there after, by a writer thread of their own
    (at most a read-ahead window waiting; close() waits until they are written).

    Read-ahead follows one sequential reader. A read that starts where the previous one
    ended, or anywhere up to one GET past what was planned ahead (a reader of a chain skips
    what upper layers hold), keeps the stream, and so does one a little behind within a
    running stream (threads finish out of order); anything else ends it. While the stream
    lasts, the cache keeps up to `workers` GETs in flight ahead of the reader, planned over
    the blocks that hold data (holes are stepped over, not fetched and not counted), with a
    window of data that starts at twice the reader's read (so that a few small reads of
    metadata cost little more) and doubles whenever the reader had to wait (up to
    `read_ahead_max`): it grows until the service keeps up with the reader or the window is
    full. GETs are planned whole (`max_get`, or the window while it is smaller): the
    pipeline is topped up (by the reader, and by each GET that finishes) once a whole GET
    fits into the window again.
    """

    def __init__(self, name: str, size: int, fetch: Fetch, *, data_ranges: DataRanges | None = None,
                 store: BlockStore | None = None, block: int = BLOCK, capacity: int = CACHE_BYTES,
                 max_get: int = MAX_GET, read_ahead_max: int = READ_AHEAD_MAX,
                 workers: int = FETCH_THREADS) -> None:
        self.name = name
        self.size = size
        self._fetch = fetch
        self._data_ranges = data_ranges
        self._store = store
        self.block = block
        self.blocks = -(-size // block)
        self.capacity_blocks = max(1, capacity // block)
        self.blocks_per_get = max(1, max_get // block)
        self.read_ahead_blocks = min(read_ahead_max // block, self.capacity_blocks // 2)
        self._workers = workers
        self._zero = bytes(block)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._inflight: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._stream = Stream()
        self._ahead_gets = 0  # read-ahead runs submitted and not finished
        self._gets_now = 0
        self.most_gets_at_once = 0  # GETs in progress at the same time, at most (for tests)
        self.fetches = 0  # GETs made
        self.bytes_fetched = 0
        self._closed = False
        self._writer: ThreadPoolExecutor | None = None  # writes to the store, one at a time
        self._backlog = 0  # fetched blocks waiting to be written to the store
        self._backlog_max = self.read_ahead_blocks or self.blocks_per_get
        self._backlog_room = threading.Condition()
        self._writes_closed = False
        _caches.add(self)

    # ------------------------------------------------------------------ reading
    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise ImageIOError(
                f"{self.name}: reading {length} bytes at offset {offset} runs past the end of the "
                f"blob ({self.size} bytes): the blob is shorter than its metadata says", errno.EIO)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        self._check(offset, length)
        first, last = offset // self.block, (offset + length - 1) // self.block
        got, waited = self._get(first, last)
        if first == last:
            start = offset - first * self.block
            data = got[first][start:start + length]
        else:
            buf = bytearray(length)
            self._copy(got, offset, memoryview(buf))
            data = bytes(buf)
        self._read_ahead(offset, length, last, waited)
        return data

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes at `offset`: one copy, from the cached blocks."""
        length = len(view)
        if length <= 0:
            return
        self._check(offset, length)
        first, last = offset // self.block, (offset + length - 1) // self.block
        got, waited = self._get(first, last)
        self._copy(got, offset, view)
        self._read_ahead(offset, length, last, waited)

    def _copy(self, got: dict[int, bytes], offset: int, view: memoryview) -> None:
        index, inner = divmod(offset, self.block)
        done, length = 0, len(view)
        while done < length:
            data = got[index]
            count = min(len(data) - inner, length - done)
            view[done:done + count] = memoryview(data)[inner:inner + count]
            done += count
            index, inner = index + 1, 0

    def _get(self, first: int, last: int) -> tuple[dict[int, bytes], bool]:
        """The blocks first..last, and whether the reader had to wait for any of them."""
        got: dict[int, bytes] = {}
        waits: dict[int, Future] = {}
        missing: list[int] = []
        with self._lock:
            for index in range(first, last + 1):
                data = self._blocks.get(index)
                if data is not None:
                    self._blocks.move_to_end(index)
                    got[index] = data
                elif index in self._inflight:
                    waits[index] = self._inflight[index]
                else:
                    missing.append(index)
        if got:
            TRANSFER.add_memory_hits(len(got))
        mine: dict[int, Future] = {}
        if missing:
            for index in self._holes(missing):
                got[index] = self._zero  # never written: zeros, no request
            mine = self._start_missing([i for i in missing if i not in got], got, waits)
        self._load_runs(self._runs(sorted(mine)))
        for index, future in {**mine, **waits}.items():
            got[index] = future.result()
        return got, bool(mine or waits)

    def _start_missing(self, missing: list[int], got: dict[int, bytes],
                       waits: dict[int, Future]) -> dict[int, Future]:
        """Blocks still missing: cached or in flight by now (another thread may have started
        them meanwhile) go into `got` or `waits`; the rest are registered as this reader's."""
        mine: dict[int, Future] = {}
        if not missing:
            return mine
        with self._lock:
            for index in missing:
                data = self._blocks.get(index)
                if data is not None:
                    got[index] = data
                elif index in self._inflight:
                    waits[index] = self._inflight[index]
                else:
                    mine[index] = self._inflight[index] = Future()
        return mine

    def _load_runs(self, runs: list[tuple[int, int]]) -> None:
        """The first run in this thread, the others in the pool; the first failure raised
        once every run has finished."""
        if not runs:
            return
        others = [self._submit(run) for run in runs[1:]]
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

    def _data_spans(self, first: int, stop: int) -> list[tuple[int, int]]:
        """Spans [a, b) of blocks in [first, stop) that hold any written page."""
        if self._data_ranges is None:
            return [(first, stop)] if first < stop else []
        spans: list[tuple[int, int]] = []
        for lo, hi in self._data_ranges(first * self.block, min(self.size, stop * self.block)):
            a, b = lo // self.block, -(-hi // self.block)
            if spans and spans[-1][1] >= a:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
        return spans

    def _holes(self, indexes: list[int]) -> set[int]:
        """Which of these (sorted) blocks hold no written page at all."""
        if self._data_ranges is None:
            return set()
        spans = self._data_spans(indexes[0], indexes[-1] + 1)
        holes, at = set(), 0
        for index in indexes:
            while at < len(spans) and spans[at][1] <= index:
                at += 1
            if at == len(spans) or spans[at][0] > index:
                holes.add(index)
        return holes

    def _runs(self, indexes: list[int]) -> list[tuple[int, int]]:
        """Contiguous (first block, count) runs of at most blocks_per_get blocks."""
        runs: list[tuple[int, int]] = []
        for index in indexes:
            if runs and runs[-1][0] + runs[-1][1] == index and runs[-1][1] < self.blocks_per_get:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((index, 1))
        return runs

    def _submit(self, run: tuple[int, int], ahead: bool = False) -> Future:
        with self._lock:
            if self._pool is None and not self._closed:
                # More threads than read-ahead GETs: a reader's own runs never queue behind them.
                self._pool = ThreadPoolExecutor(self._workers + max(2, self._workers // 2),
                                                thread_name_prefix="vhdfs-blob")
            pool = self._pool
            if ahead:
                self._ahead_gets += 1
        try:
            if pool is None:
                raise RuntimeError("closed")
            return pool.submit(self._load, run, ahead)
        except RuntimeError:  # closed meanwhile: nobody may wait for these blocks forever
            error = ImageIOError(f"{self.name}: closed while reading", errno.EIO)
            self._fail(run, error)
            if ahead:
                self._ahead_done(ok=False)
            future: Future = Future()
            future.set_exception(error)
            return future

    def _fail(self, run: tuple[int, int], exc: BaseException) -> None:
        with self._lock:
            for index in range(run[0], run[0] + run[1]):
                future = self._inflight.pop(index, None)
                if future is not None:
                    future.set_exception(exc)

    def _load(self, run: tuple[int, int], ahead: bool = False) -> None:
        """Load one run of blocks (registered in flight by the caller): from the store, else
        from the blob; fill the cache and complete their futures. A read-ahead run frees its
        slot as soon as its blocks are there, before they are written to the store."""
        first, count = run
        pieces: dict[int, bytes] = {}
        fetched: list[int] = []
        try:
            wanted = self._from_store(range(first, first + count), pieces)
            for start, blocks in self._runs(wanted):
                self._fetch_blocks(start, blocks, pieces)
                fetched += range(start, start + blocks)
        except BaseException as exc:
            self._fail(run, exc)
            if ahead:
                self._ahead_done(ok=False)  # the reader waiting for them gets the error
            raise
        with self._lock:
            for index in range(first, first + count):
                piece = pieces[index]
                self._blocks[index] = piece
                self._blocks.move_to_end(index)
                future = self._inflight.pop(index, None)
                if future is not None:
                    future.set_result(piece)
            while len(self._blocks) > self.capacity_blocks:
                self._blocks.popitem(last=False)
        if ahead:
            self._ahead_done(ok=True)
        if self._store is not None and fetched:  # after the readers have their blocks
            self._write_later([(index, pieces[index]) for index in fetched])

    def _write_later(self, blocks: list[tuple[int, bytes]]) -> None:
        """Hand fetched blocks to the cache folder's one writer thread, so that neither a
        reader nor a fetch thread waits for the disk (a cold cache's reads were slowed by
        their own writes); while a read-ahead window of blocks (32 MiB) waits to be written,
        the thread that fetched more waits for room, so memory stays bounded."""
        with self._backlog_room:
            while self._backlog and self._backlog + len(blocks) > self._backlog_max:
                self._backlog_room.wait()
            self._backlog += len(blocks)
            writer = self._writer
            if writer is None and not self._writes_closed:
                writer = self._writer = ThreadPoolExecutor(
                    1, thread_name_prefix="vhdfs-cache-write")
        try:
            if writer is not None:
                writer.submit(self._write_blocks, blocks)
                return
        except RuntimeError:  # the interpreter is exiting: no new work for any pool
            pass
        self._write_blocks(blocks)  # (also a read that ends after close()): here, as fetched

    def _write_blocks(self, blocks: list[tuple[int, bytes]]) -> None:
        try:
            for index, data in blocks:
                self._store.put(index, data)  # type: ignore[union-attr]
        finally:
            with self._backlog_room:
                self._backlog -= len(blocks)
                self._backlog_room.notify_all()

    def _from_store(self, indexes: range, pieces: dict[int, bytes]) -> list[int]:
        """The blocks the persistent store holds (whole) into `pieces`; the others."""
        wanted = list(indexes)
        if self._store is None:
            return wanted
        for index in wanted:
            data = self._store.get(index)
            if data is not None and len(data) == min(self.block, self.size - index * self.block):
                pieces[index] = data
        return [index for index in wanted if index not in pieces]

    def _fetch_blocks(self, start: int, blocks: int, pieces: dict[int, bytes]) -> None:
        """Blocks start.. start + blocks - 1 from the blob, in one request, into `pieces`."""
        offset = start * self.block
        length = min(blocks * self.block, self.size - offset)
        data = self._fetch_trimmed(offset, length)
        if blocks == 1:
            pieces[start] = bytes(data)
            return
        view = memoryview(data)
        for k in range(blocks):
            pieces[start + k] = bytes(view[k * self.block:(k + 1) * self.block])

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
        with self._lock:
            self._gets_now += 1
            self.most_gets_at_once = max(self.most_gets_at_once, self._gets_now)
        try:
            data = self._fetch(lo, hi - lo)
        finally:
            with self._lock:
                self._gets_now -= 1
                self.fetches += 1
                self.bytes_fetched += hi - lo
        if lo == offset and hi == end:
            return data
        return bytes(lo - offset) + data + bytes(end - hi)

    # ------------------------------------------------------------------ read-ahead
    def _read_ahead(self, offset: int, length: int, last: int, waited: bool) -> None:
        """Follow the sequential reader (see the class's docstring)."""
        if self.read_ahead_blocks == 0:
            return
        with self._lock:
            stream = self._stream
            if self._closed:
                return
            reach = max(stream.end, stream.frontier * self.block) + \
                self.blocks_per_get * self.block
            # Backwards only inside a running stream's window (readers in parallel threads
            # finish out of order); reading the same place again is no stream.
            behind = stream.window * self.block
            sequential = stream.end >= 0 and stream.end - behind <= offset <= reach
            stream.end = offset + length
            if not sequential:
                stream.window = 0
                stream.frontier = last + 1
                stream.runs.clear()
                stream.generation += 1
                return
            if stream.window == 0:  # twice what the reader asks for at a time, to begin with
                reads = -(-length // self.block)
                stream.window = min(2 * reads, self.blocks_per_get, self.read_ahead_blocks)
            elif waited:
                stream.window = min(2 * stream.window, self.read_ahead_blocks)
            stream.frontier = max(stream.frontier, last + 1)
        self._top_up()

    def _ahead_done(self, ok: bool) -> None:
        with self._lock:
            self._ahead_gets -= 1
        if ok:
            self._top_up()  # a slot is free: keep the pipeline full between reads too

    def _top_up(self) -> None:
        """Plan GETs ahead of the reader while the window has room and a slot is free."""
        with self._lock:
            stream = self._stream
            if stream.planning or self._closed or stream.window == 0:
                return
            passed = (stream.end - 1) // self.block  # the reader's last block
            while stream.runs and sum(stream.runs[0]) - 1 <= passed:
                stream.runs.popleft()
            ahead = sum(count for _, count in stream.runs)
            if stream.runs and stream.runs[0][0] <= passed:
                ahead -= passed - stream.runs[0][0] + 1
            room = stream.window - ahead
            slots = self._workers - self._ahead_gets
            if slots <= 0 or stream.frontier >= self.blocks or \
                    room < min(self.blocks_per_get, stream.window):
                return  # keep GETs large: wait until a whole one fits
            stream.planning = True
            frontier, generation, window = stream.frontier, stream.generation, stream.window
        submit: list[tuple[int, int]] = []
        planned: list[tuple[int, int]] = []
        position = frontier
        try:
            scan_end = min(self.blocks, frontier + SCAN_AHEAD)
            full = False  # no slot left, or no room for another whole GET
            while not full and position < scan_end:
                chunk_end = min(scan_end, position + 4 * self.read_ahead_blocks)
                for a, b in self._data_spans(position, chunk_end):
                    a = max(a, position)
                    while a < b:
                        # Shorter where the data ends, and while the window is small.
                        count = min(b - a, self.blocks_per_get, window)
                        if count > room or len(submit) >= slots:
                            full = True
                            break
                        submit += self._claim(a, count)
                        planned.append((a, count))
                        room -= count
                        a += count
                    position = a
                    if full:
                        break
                else:
                    position = chunk_end  # nothing more to fetch up to here: holes
        finally:
            with self._lock:
                if stream.generation == generation:
                    stream.frontier = max(stream.frontier, position)
                    stream.runs.extend(planned)
                stream.planning = False
        for run in submit:
            self._submit(run, ahead=True)

    def _claim(self, first: int, count: int) -> list[tuple[int, int]]:
        """Register the blocks of first..first+count that are neither cached nor in flight;
        returns them as runs to fetch."""
        claimed = []
        with self._lock:
            for index in range(first, first + count):
                if index not in self._blocks and index not in self._inflight:
                    self._inflight[index] = Future()
                    claimed.append(index)
        return self._runs(claimed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._blocks.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._backlog_room:  # (runs that were in progress above have handed theirs over)
            writer, self._writer = self._writer, None
            self._writes_closed = True
        if writer is not None:
            writer.shutdown(wait=True)  # what was fetched is in the store before it closes
        with self._lock:  # runs cancelled in the queue: nobody may wait for them forever
            pending, self._inflight = self._inflight, {}
        for future in pending.values():
            future.set_exception(ImageIOError(f"{self.name}: closed while reading", errno.EIO))


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
        with cache._backlog_room:  # and the writes to the cache folder
            cache._backlog_room.wait_for(lambda c=cache: c._backlog == 0, timeout=FORK_WAIT)


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._lock = threading.Lock()
        cache._pool = None  # its threads stayed in the parent
        cache._inflight = {}
        cache._ahead_gets = cache._gets_now = 0
        cache._stream = Stream()
        cache._writer = None  # its thread stayed in the parent too
        cache._backlog = 0
        cache._backlog_room = threading.Condition()


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
        self._store = blockcache.open_store(location, self.blob.etag)  # None: cache off
        self.blob.segment_store = self._store
        self._cache = RangeCache(self.name, self.blob.size, self.blob.fetch,
                                 data_ranges=self.blob.data_ranges, store=self._store)

    @property
    def credential(self) -> Credential:
        return self.blob.credential

    def size(self) -> int:
        return self.blob.size

    def read_at(self, offset: int, length: int) -> bytes:
        return self._cache.read(offset, length)

    def read_into(self, offset: int, view: memoryview) -> None:
        self._cache.read_into(offset, view)

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
        if self._store is not None:
            self._store.close()  # the cache folder's size bound


def open_blob_spec(spec: str, writable: bool = False) -> BlobSource:
    """The BlobSource of a blob spec (vhdfs.resolve.open_source sends blob specs here)."""
    location = parse_location(spec)
    if writable:
        raise RefusedError(f"{location.display}: page blobs are opened read-only; work on a local "
                           "copy (vhdfs convert) and upload it with vhdfs upload")
    return BlobSource(location)

