"""What an upload writes, checked against an in-memory model of the blob: the writes of a flat
upload make the flattened chain and send only pages with a non-zero byte, the writes of a
patch make it on top of the parent's blob (clearing the child's zeros only where the base
blob holds pages), and every write keeps Azure's rules (at most 4 MiB, 512-byte aligned)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdfs.chain import Chain
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.upload.pages import nonzero_pages
from vhdfs.upload.planning import MAX_WRITE, Write, file_writes, flat_writes, patch_writes, range_hash
from vhdfs.vhd.layer import Layer

SECTOR = 512
MiB = 1024 * 1024
SIZE = 10 * MiB  # more than two 4 MiB writes of contiguous data fit
FOOTER = b"F" * SECTOR


def apply(blob: bytearray, writes: list[Write]) -> None:
    for w in writes:
        blob[w.offset:w.end] = w.data if w.data is not None else bytes(w.length)


def check_rules(writes: list[Write]) -> None:
    for w in writes:
        assert w.offset % SECTOR == 0 and w.length % SECTOR == 0 and w.length > 0
        if w.data is not None:
            assert len(w.data) == w.length <= MAX_WRITE
        assert w.sha256 == range_hash(Write(w.offset, w.length, w.data))  # hashed as sent
    ends = [(w.offset, w.end) for w in writes]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))  # in order, disjoint


def pages_of(data: bytes) -> set[int]:
    """Offsets of the pages of `data` with a non-zero byte."""
    return {at for at in range(0, len(data), SECTOR)
            if data[at:at + SECTOR].count(0) < len(data[at:at + SECTOR])}  # a short last page too


def written_pages(writes: list[Write], *, clears: bool = False) -> set[int]:
    return {at for w in writes if (w.data is None) == clears
            for at in range(w.offset, w.end, SECTOR)}


layer_writes = st.lists(st.tuples(
    st.integers(0, SIZE // SECTOR - 1),  # first sector
    st.integers(1, 6 * MiB // SECTOR),  # sectors
    st.sampled_from(["random", "zeros", "sparse"])), max_size=6)


def write_all(path: Path, plan: list, seed: int) -> None:
    rng = random.Random(seed)
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        for first, count, kind in plan:
            count = min(count, SIZE // SECTOR - first)
            if kind == "random":
                data = rng.randbytes(count * SECTOR)
            elif kind == "zeros":
                data = bytes(count * SECTOR)
            else:  # one non-zero sector in every 200: zero grains inside data
                data = bytearray(count * SECTOR)
                for at in range(0, len(data), 200 * SECTOR):
                    data[at] = 1
                data = bytes(data)
            layer.write(first * SECTOR, data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base_plan=layer_writes, child_plan=layer_writes, seed=st.integers(0, 99),
       block=st.sampled_from([512 * 1024, 2 * MiB]), readers=st.sampled_from([1, 3]))
def test_flat_and_patch_writes_make_the_chain(tmp_path: Path, base_plan: list, child_plan: list,
                                              seed: int, block: int, readers: int) -> None:
    folder = tmp_path / f"c{seed}-{len(base_plan)}-{len(child_plan)}-{block}-{readers}"
    folder.mkdir(exist_ok=True)
    base, child = folder / "base.vhd", folder / "child.vhd"
    for path in (base, child):
        path.unlink(missing_ok=True)
    create_dynamic(base, SIZE, block)
    write_all(base, base_plan, seed)
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    write_all(child, child_plan, seed + 1)

    with open_chain(str(child)) as chain, open_chain(str(base)) as parent:
        want = chain.read(0, SIZE) + FOOTER
        writes = list(flat_writes(chain, FOOTER, readers=readers))
        check_rules(writes)
        blob = bytearray(SIZE + SECTOR)
        apply(blob, writes)
        assert blob == want
        assert all(w.data is not None for w in writes)
        # Only data goes up: exactly the pages with a non-zero byte, and the footer.
        assert written_pages(writes[:-1]) == pages_of(want[:SIZE])

        # Patch: the parent's blob (flat, as its upload left it: only its data pages) plus
        # the child's writes.
        base_blob = parent.read(0, SIZE)
        base_pages = sorted(pages_of(base_blob))

        def listed(start: int, end: int) -> list[tuple[int, int]]:
            return [(at, at + SECTOR) for at in base_pages if start <= at < end]

        parent_blob = bytearray(base_blob + b"P" * SECTOR)
        top = Layer(LocalFile(child))
        try:
            patch = list(patch_writes(Chain([top]), 1, FOOTER, listed, readers=readers))
        finally:
            top.close()
        check_rules(patch)
        apply(parent_blob, patch)
        assert parent_blob == want
        # Of what the child holds: its data pages are written, its zero pages cleared where
        # the base has data, and nothing else is touched.
        held = {at for e in chain.iter_extents() if e.layer == 0
                for at in range(e.offset, e.offset + e.length, SECTOR)}
        assert written_pages(patch[:-1]) == held & pages_of(want[:SIZE])
        assert written_pages(patch, clears=True) == (held - pages_of(want[:SIZE])) & \
            set(base_pages)


def test_a_zero_sector_of_the_child_over_base_data_is_cleared(tmp_path: Path) -> None:
    """The case a page-level zero check could get wrong: the child holds one zero sector over
    the base's data (cleared), and zeros over a base hole (left alone: nothing to clear)."""
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    create_dynamic(base, SIZE, 512 * 1024)
    write_all_bytes(base, [(1 * MiB, b"\xbb" * 8192)])
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    write_all_bytes(child, [(1 * MiB, b"\xcc" * 512 + bytes(512) + b"\xcc" * 512),
                            (6 * MiB, bytes(4096) + b"\xdd" * 512)])
    top = Layer(LocalFile(child))
    try:
        base_ranges = [(1 * MiB, 1 * MiB + 8192)]
        patch = list(patch_writes(Chain([top]), 1, FOOTER,
                                  lambda lo, hi: [(a, b) for a, b in base_ranges if a < hi and b > lo]))
    finally:
        top.close()
    assert [(w.offset, w.length, w.data is None) for w in patch[:-1]] == [
        (1 * MiB, 512, False),  # the child's data
        (1 * MiB + 512, 512, True),  # its zero sector over the base's 0xbb: cleared
        (1 * MiB + 1024, 512, False),  # (the sectors after it are the base's: the bitmap)
        (6 * MiB + 4096, 512, False),  # zeros over a hole of the base: not sent, not cleared
    ]


def write_all_bytes(path: Path, writes: list[tuple[int, bytes]]) -> None:
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        for offset, data in writes:
            layer.write(offset, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2 * MiB // SECTOR), st.integers(1, 3 * MiB // SECTOR),
                          st.sampled_from(["random", "zeros", "sparse"])), max_size=5),
       st.integers(0, 99), st.sampled_from([1, 2, 4]))
def test_file_writes_send_its_data_pages(tmp_path: Path, plan: list, seed: int,
                                         readers: int) -> None:
    """--as-is: the file as it is, its zero pages (holes and zeros inside data) left out."""
    rng = random.Random(seed)
    path = tmp_path / f"f{seed}-{len(plan)}-{readers}.img"
    size = 6 * MiB
    with open(path, "wb") as handle:
        handle.truncate(size)
        for first, count, kind in plan:
            data = bytearray(rng.randbytes(count * SECTOR)) if kind == "random" else \
                bytearray(count * SECTOR)
            if kind == "sparse":
                for at in range(0, len(data), 3 * SECTOR + 7):
                    data[at] = 9
            handle.seek(first * SECTOR)
            handle.write(data[:size - first * SECTOR])
    want = path.read_bytes()
    with LocalFile(path) as source:
        writes = list(file_writes(source, readers=readers))
    check_rules(writes)
    blob = bytearray(size)
    apply(blob, writes)
    assert blob == want
    assert written_pages(writes) == pages_of(want)


@given(st.binary(max_size=5000), st.integers(0, 9))
def test_nonzero_pages_against_a_page_loop(data: bytes, zeros: int) -> None:
    buf = bytes(zeros * SECTOR) + data + bytes(70 * 1024) + data
    found = nonzero_pages(buf)
    assert {at for lo, hi in found for at in range(lo, hi, SECTOR)} == pages_of(buf)
    assert all(a[1] < b[0] for a, b in zip(found, found[1:], strict=False))  # merged
