"""What an upload writes, checked against an in-memory model of the blob: the writes of a flat
upload make the flattened chain, the writes of a patch make it on top of the parent's blob,
and every write keeps Azure's rules (at most 4 MiB, 512-byte aligned)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdfs.chain import Chain
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.upload.planning import MAX_WRITE, ZERO_GRAIN, Write, coalesce, flat_writes, patch_writes
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
    ends = [(w.offset, w.end) for w in writes]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))  # in order, disjoint


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
       block=st.sampled_from([512 * 1024, 2 * MiB]))
def test_flat_and_patch_writes_make_the_chain(tmp_path: Path, base_plan: list, child_plan: list,
                                              seed: int, block: int) -> None:
    folder = tmp_path / f"c{seed}-{len(base_plan)}-{len(child_plan)}-{block}"
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
        writes = list(flat_writes(chain, FOOTER))
        check_rules(writes)
        blob = bytearray(SIZE + SECTOR)
        apply(blob, writes)
        assert blob == want
        assert all(w.data is not None for w in writes)
        # Only data goes up: no 64 KiB grain of a write is all zeros where the disk is zeros
        # on the whole grain.
        for w in writes[:-1]:
            for grain in range(w.offset - w.offset % ZERO_GRAIN, w.end, ZERO_GRAIN):
                if want[grain:grain + ZERO_GRAIN] == bytes(ZERO_GRAIN):
                    assert not (w.offset <= grain and grain + ZERO_GRAIN <= w.end)

        # Patch: the parent's blob (flat) plus the child's writes, zeros included.
        parent_blob = bytearray(parent.read(0, SIZE) + b"P" * SECTOR)
        top = Layer(LocalFile(child))
        try:
            patch = list(patch_writes(Chain([top]), 1, FOOTER))
        finally:
            top.close()
        check_rules(patch)
        apply(parent_blob, patch)
        assert parent_blob == want
        child_bytes = sum(w.length for w in patch[:-1])
        here = sum(e.length for e in chain.iter_extents() if e.layer == 0)
        assert child_bytes == here  # exactly what the child holds, nothing of the base


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(1, 40), st.booleans()), max_size=20),
       st.sampled_from([2048, 8192, MAX_WRITE]))
def test_coalesce_keeps_bytes_and_limits(items: list, limit: int) -> None:
    pieces, pos = [], 0
    for gap, sectors, is_data in items:
        pos += gap * SECTOR
        length = sectors * SECTOR
        data = bytes([len(pieces) % 250 + 1]) * length if is_data else None
        pieces.append(Write(pos, length, data))
        pos += length
    out = list(coalesce(pieces, limit))
    check_rules(out)
    assert all(w.length <= limit for w in out if w.data is not None)
    want, got = bytearray(pos + 1), bytearray(pos + 1)
    apply(want, pieces)
    apply(got, out)
    assert got == want
    cleared = sorted((w.offset, w.end) for w in pieces if w.data is None)
    assert sorted((w.offset, w.end) for w in out if w.data is None) == _merge(cleared)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
