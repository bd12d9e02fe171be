"""Many requests at once: 8 readers against the flat reference, readers racing a writer."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fuse.conftest import KiB, add_child, flat_reference, make_chain
from vhdfs.chain import Chain
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import UNALLOCATED, Layer


def _random_reads(path, size, seed, count=150):
    """(offset, bytes) of `count` reads of 1 byte to 300 KiB at random offsets."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        out = []
        for _ in range(count):
            length = rng.choice([1, 512, 4096, rng.randrange(1, 300 * KiB)])
            offset = rng.randrange(size)
            out.append((offset, os.pread(fd, length, offset)))
        return out
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [False, True], ids=["inline", "worker-threads"])
def test_eight_concurrent_readers_see_the_flat_disk(tmp_path, mount, threads):
    top = make_chain(tmp_path / "chain", 3)[-1]
    flat = flat_reference(top, tmp_path / "flat.raw")
    mounted = mount(top, threads=threads)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda seed: _random_reads(mounted.file(), len(flat), seed),
                                range(8)))
    checked = 0
    for reads in results:
        for offset, data in reads:
            assert data == flat[offset:offset + len(data)], f"read at {offset} differs"
            assert len(data) > 0
            checked += 1
    assert checked == 8 * 150


@pytest.mark.parametrize("threads", [False, True], ids=["inline", "worker-threads"])
def test_readers_racing_a_writer_see_old_or_new_data_and_the_end_state(tmp_path, mount, threads):
    top = add_child(make_chain(tmp_path / "chain", 2)[-1], tmp_path / "chain" / "new.vhd")
    flat = bytearray(flat_reference(top, tmp_path / "flat.raw"))
    mounted = mount(top, "--rw", threads=threads)
    rng = random.Random(9)
    # Only blocks the child does not hold yet: a sector there is written once, and its bitmap
    # bit is set after its data, so a reader sees the whole old or the whole new sector (a
    # sector rewritten in place could be seen half written, as on any file).
    # A look at the BAT under the writer: force-shared, as the writer holds the file.
    with Layer(LocalFile(top, force_share=True)) as layer:
        free_blocks = [i for i, entry in enumerate(layer.bat) if entry == UNALLOCATED]
        per_block = layer.block_size // (64 * KiB)
    slots = [block * per_block + i for block in free_blocks for i in range(per_block)]
    writes = []
    for slot in rng.sample(slots, 40):
        writes.append((slot * 64 * KiB + 512 * rng.randrange(64), rng.randbytes(4096 * 3)))
    before = bytes(flat)
    done = threading.Event()

    def write_all():
        fd = os.open(mounted.file(), os.O_WRONLY)
        try:
            for offset, data in writes:
                os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
            done.set()

    def read_while_writing(seed):
        rng = random.Random(seed)
        fd = os.open(mounted.file(), os.O_RDONLY)
        try:
            while not done.is_set():
                offset, data = rng.choice(writes)
                got = os.pread(fd, len(data), offset)
                old = before[offset:offset + len(data)]
                # Sector by sector: each is the old or the new content, never anything else.
                for i in range(0, len(data), 512):
                    assert got[i:i + 512] in (old[i:i + 512], data[i:i + 512]), offset
        finally:
            os.close(fd)

    with ThreadPoolExecutor(5) as pool:
        readers = [pool.submit(read_while_writing, seed) for seed in range(4)]
        pool.submit(write_all).result()
        for reader in readers:
            reader.result()
    for offset, data in writes:
        flat[offset:offset + len(data)] = data
    assert mounted.file().read_bytes() == flat
    assert mounted.stop() == 0, mounted.stderr
    with open_chain(str(top)) as chain:
        assert chain.read(0, chain.size) == flat


class _PausingLayer:
    """Wraps a layer so that one `map` call waits until released (a read caught mid-resolve)."""

    def __init__(self, layer, entered: threading.Event, release: threading.Event) -> None:
        self._layer, self._entered, self._release = layer, entered, release
        self.armed = False

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def map(self, offset, length):
        runs = self._layer.map(offset, length)
        if self.armed:
            self.armed = False
            self._entered.set()
            self._release.wait(10)
        return runs


def test_an_extent_map_resolved_during_a_write_is_not_cached(tmp_path):
    """Chain level: a reader thread resolves a block's extents, a writer changes that block and
    invalidates it, then the reader's (older) result must not become the cached answer."""
    top = make_chain(tmp_path / "chain", 2)[-1]
    entered, release = threading.Event(), threading.Event()
    with open_chain(str(top), writable=True) as opened:
        pausing = _PausingLayer(opened.layers[0], entered, release)
        chain = Chain([pausing, *opened.layers[1:]], opened.links)
        pausing.armed = True
        reader = threading.Thread(target=chain.read, args=(0, 4096))
        reader.start()
        assert entered.wait(10)
        chain.write(0, b"\xab" * 4096)  # lands while the reader is inside map()
        release.set()
        reader.join(10)
        assert chain.read(0, 4096) == b"\xab" * 4096
