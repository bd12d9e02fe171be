"""The block cache of remote reads against an in-memory blob: every read returns the model's
bytes, from one thread or many, with eviction, read-ahead, holes and failing fetches; the
read-ahead keeps N GETs in flight across holes and grows with the service; random reads fetch
only their own block."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vhdfs.azure.blob import RangeCache
from vhdfs.errors import ImageIOError, RemoteError

BLOCK = 4096
MAX_GET = 4 * BLOCK
CAPACITY = 8 * BLOCK


class MemoryBlob:
    """A blob in memory: content, the page ranges written, and a log of every fetch."""

    def __init__(self, size: int, pages: list[tuple[int, int]], seed: int) -> None:
        rng = random.Random(seed)
        self.content = bytearray(size)
        for lo, hi in pages:
            self.content[lo:hi] = rng.randbytes(hi - lo)
        self.pages = pages
        self.fetches: list[tuple[int, int]] = []
        self.fail_next = 0
        self.lock = threading.Lock()

    def fetch(self, offset: int, length: int) -> bytes:
        with self.lock:
            self.fetches.append((offset, length))
            if self.fail_next:
                self.fail_next -= 1
                raise RemoteError("blob: injected failure")
        assert 0 <= offset and length > 0 and offset + length <= len(self.content)
        return bytes(self.content[offset:offset + length])

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        return [(max(lo, start), min(hi, end)) for lo, hi in self.pages if lo < end and hi > start]


@st.composite
def blobs(draw: st.DrawFn) -> MemoryBlob:
    size = draw(st.integers(1, 40)) * 512 * draw(st.sampled_from([1, 8]))
    pages = []
    pos = 0
    while pos < size:
        gap = draw(st.integers(0, 16)) * 512
        length = draw(st.integers(1, 24)) * 512
        lo, hi = min(size, pos + gap), min(size, pos + gap + length)
        if lo < hi:
            pages.append((lo, hi))
        pos = hi
    return MemoryBlob(size, pages, draw(st.integers(0, 1000)))


@st.composite
def reads(draw: st.DrawFn, size: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(draw(st.integers(1, 30))):
        if out and draw(st.booleans()):  # sequential: go on where the last read ended
            offset = min(out[-1][0] + out[-1][1], size - 1)
        else:
            offset = draw(st.integers(0, size - 1))
        out.append((offset, draw(st.integers(1, min(size - offset, 6 * BLOCK)))))
    return out


def cache_of(blob: MemoryBlob, holes: bool) -> RangeCache:
    return RangeCache("blob", len(blob.content), blob.fetch,
                      data_ranges=blob.data_ranges if holes else None, block=BLOCK,
                      capacity=CAPACITY, max_get=MAX_GET, read_ahead_max=4 * BLOCK, workers=3)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), blob=blobs(), holes=st.booleans())
def test_reads_match_the_model(data: st.DataObject, blob: MemoryBlob, holes: bool) -> None:
    plan = data.draw(reads(len(blob.content)))
    cache = cache_of(blob, holes)
    try:
        for offset, length in plan:
            assert cache.read(offset, length) == blob.content[offset:offset + length]
    finally:
        cache.close()
    for offset, length in blob.fetches:
        assert length <= MAX_GET
        if holes:  # nothing is fetched where no page was ever written
            assert blob.data_ranges(offset, offset + length), (offset, length)
    assert len(cache._blocks) <= cache.capacity_blocks


@settings(max_examples=40, deadline=None)
@given(data=st.data(), blob=blobs())
def test_concurrent_readers_match_the_model(data: st.DataObject, blob: MemoryBlob) -> None:
    plan = data.draw(reads(len(blob.content)))
    cache = cache_of(blob, holes=True)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda r: cache.read(*r), plan * 3))
    finally:
        cache.close()
    for (offset, length), got in zip(plan * 3, results, strict=True):
        assert got == blob.content[offset:offset + length]


def test_a_failed_fetch_reaches_the_reader_and_is_not_cached() -> None:
    blob = MemoryBlob(64 * BLOCK, [(0, 64 * BLOCK)], seed=1)
    cache = cache_of(blob, holes=False)
    try:
        blob.fail_next = 1
        with pytest.raises(RemoteError, match="injected"):
            cache.read(5 * BLOCK, 100)
        # Nothing stuck in flight: the same blocks are fetched again, and read right.
        assert cache.read(5 * BLOCK, 100) == blob.content[5 * BLOCK:5 * BLOCK + 100]
        # A read spanning several GETs where one of them fails: the error, then a good read.
        blob.fail_next = 1
        with pytest.raises(RemoteError):
            cache.read(20 * BLOCK, 3 * MAX_GET)
        assert cache.read(20 * BLOCK, 3 * MAX_GET) == \
            blob.content[20 * BLOCK:20 * BLOCK + 3 * MAX_GET]
        with pytest.raises(ImageIOError, match="runs past the end"):
            cache.read(64 * BLOCK - 10, 20)
    finally:
        cache.close()


def test_sequential_reads_are_fetched_ahead() -> None:
    blob = MemoryBlob(256 * BLOCK, [(0, 256 * BLOCK)], seed=2)
    cache = RangeCache("blob", len(blob.content), blob.fetch, block=BLOCK, capacity=64 * BLOCK,
                       max_get=MAX_GET, read_ahead_max=16 * BLOCK, workers=3)
    try:
        for offset in range(0, 64 * BLOCK, BLOCK // 2):
            assert cache.read(offset, BLOCK // 2) == blob.content[offset:offset + BLOCK // 2]
    finally:
        cache.close()
    # 128 sequential half-block reads cost far fewer GETs than blocks: they came in runs.
    assert len(blob.fetches) <= 64 // 4 + 4
    assert any(length == MAX_GET for _, length in blob.fetches)


class SlowBlob(MemoryBlob):
    """A MemoryBlob whose fetches take a while, with the most that were ever in progress."""

    def __init__(self, size: int, pages: list[tuple[int, int]], seed: int, delay: float) -> None:
        super().__init__(size, pages, seed)
        self.delay = delay
        self.now = self.most = 0

    def fetch(self, offset: int, length: int) -> bytes:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay)
            return super().fetch(offset, length)
        finally:
            with self.lock:
                self.now -= 1


def striped(blocks: int, data: int, hole: int) -> list[tuple[int, int]]:
    """Pages in runs of `data` blocks, each followed by `hole` blocks never written (and a
    short gap of unwritten sectors inside every run)."""
    pages, at = [], 0
    while at < blocks:
        end = min(blocks, at + data)
        pages += [(at * BLOCK, at * BLOCK + 1024), (at * BLOCK + 2048, end * BLOCK)]
        at = end + hole
    return pages


def test_read_ahead_keeps_n_gets_in_flight_across_holes() -> None:
    """A reader that goes through a blob skipping its holes (as a chain's reader skips what
    upper layers hold, and zeros it needs not ask for) keeps one stream: N GETs in flight,
    each a whole GET, none over a hole."""
    workers, blocks = 4, 600
    blob = SlowBlob(blocks * BLOCK, striped(blocks, data=20, hole=5), seed=3, delay=0.02)
    cache = RangeCache("blob", len(blob.content), blob.fetch, data_ranges=blob.data_ranges,
                       block=BLOCK, capacity=64 * MAX_GET, max_get=MAX_GET,
                       read_ahead_max=workers * MAX_GET, workers=workers)
    step = 2 * BLOCK + 512
    try:
        for lo, hi in blob.pages:  # only where data is: the reader jumps over every hole
            for offset in range(lo, hi, step):
                length = min(step, hi - offset)
                assert cache.read(offset, length) == blob.content[offset:offset + length]
    finally:
        cache.close()
    assert blob.most >= workers, blob.most  # the read-ahead's N, whatever the reader does
    data_blocks = sum(1 for i in range(blocks) if blob.data_ranges(i * BLOCK, (i + 1) * BLOCK))
    runs = len(blob.pages) // 2
    for offset, length in blob.fetches:
        assert length <= MAX_GET
        for index in range(offset // BLOCK, -(-(offset + length) // BLOCK)):
            assert blob.data_ranges(index * BLOCK, (index + 1) * BLOCK), (offset, length)
    # Whole GETs (a shorter one where each run of data ends), not restarts of a small window.
    assert len(blob.fetches) <= data_blocks // (MAX_GET // BLOCK) + runs + 2, blob.fetches


def test_read_ahead_follows_the_service() -> None:
    """The window grows while the reader waits (up to N GETs), and no further when the
    fetches keep up."""
    fast = SlowBlob(512 * BLOCK, [(0, 512 * BLOCK)], seed=4, delay=0.0)
    slow = SlowBlob(512 * BLOCK, [(0, 512 * BLOCK)], seed=4, delay=0.03)
    windows = {}
    for name, blob in (("fast", fast), ("slow", slow)):
        cache = RangeCache("blob", len(blob.content), blob.fetch, block=BLOCK,
                           capacity=64 * MAX_GET, max_get=MAX_GET, read_ahead_max=8 * MAX_GET,
                           workers=8)
        try:
            for offset in range(0, 256 * BLOCK, BLOCK):
                assert cache.read(offset, BLOCK) == blob.content[offset:offset + BLOCK]
                if blob is fast:
                    time.sleep(0.002)  # a reader slower than the service
            windows[name] = cache._stream.window
        finally:
            cache.close()
    assert windows["slow"] == 8 * MAX_GET // BLOCK  # full: 8 GETs ahead
    assert windows["fast"] < windows["slow"]
    assert slow.most >= 8


def test_random_reads_fetch_their_own_block_only() -> None:
    """Random reads cost what they did before read-ahead followed streams across gaps: the
    block each one needs, in one GET, and no read-ahead."""
    blocks = 4096
    blob = MemoryBlob(blocks * BLOCK, [(0, blocks * BLOCK)], seed=5)
    cache = RangeCache("blob", len(blob.content), blob.fetch, block=BLOCK,
                       capacity=64 * BLOCK, max_get=MAX_GET, read_ahead_max=16 * BLOCK, workers=3)
    rng = random.Random(6)
    offsets = [rng.randrange(blocks) * BLOCK + rng.randrange(BLOCK - 512) for _ in range(300)]
    try:
        for offset in offsets:
            assert cache.read(offset, 512) == blob.content[offset:offset + 512]
    finally:
        cache.close()
    assert all(length == BLOCK for _, length in blob.fetches), blob.fetches  # no read-ahead
    assert len(blob.fetches) <= len(offsets)  # (a block evicted meanwhile is fetched again)


def test_read_into_fills_a_view_across_blocks_and_holes() -> None:
    blob = MemoryBlob(64 * BLOCK, striped(64, data=3, hole=2), seed=7)
    cache = cache_of(blob, holes=True)
    try:
        for offset, length in ((0, 64 * BLOCK), (BLOCK - 7, 9 * BLOCK + 11), (5 * BLOCK, 1)):
            buf = bytearray(length)
            cache.read_into(offset, memoryview(buf))
            assert buf == blob.content[offset:offset + length]
    finally:
        cache.close()
