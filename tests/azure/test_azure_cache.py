"""The block cache of remote reads against an in-memory blob: every read returns the model's
bytes, from one thread or many, with eviction, read-ahead, holes and failing fetches."""

from __future__ import annotations

import random
import threading
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
