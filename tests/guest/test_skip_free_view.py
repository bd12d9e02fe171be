"""Chain.with_zeros, the view --skip-free reads through: its extent map says ZERO over the
given ranges and is the chain's everywhere else; it reads the model, never writes, never
closes the chain's layers. A hypothesis model over two-layer chains."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.conftest import KiB, MiB, fill, make_base, make_child, random_writes
from vhdfs.chain import ZERO
from vhdfs.errors import ImageIOError
from vhdfs.resolve import open_chain

SECTOR = 512
SIZE = 4 * MiB


def chain_files(folder: Path, seed: int) -> Path:
    rnd = random.Random(seed)
    base = make_base(folder / "base.vhd", "dynamic", SIZE, 64 * KiB)
    fill(base, random_writes(rnd, SIZE, 10))
    child = make_child(base, folder / "child.vhd", 32 * KiB)
    fill(child, random_writes(rnd, SIZE, 10))
    return child


zero_ranges = st.lists(st.tuples(st.integers(0, SIZE // SECTOR - 1), st.integers(1, 600)),
                       max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), ranges=zero_ranges, probes=st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.integers(1, 300 * KiB)), min_size=1, max_size=8))
def test_the_view_reads_the_model(tmp_path_factory: pytest.TempPathFactory, seed: int,
                                  ranges: list[tuple[int, int]],
                                  probes: list[tuple[int, int]]) -> None:
    top = chain_files(tmp_path_factory.mktemp("view"), seed)
    zeros = [(first * SECTOR, min(count * SECTOR, SIZE - first * SECTOR)) for first, count in ranges]
    with open_chain(str(top)) as chain:
        whole = chain.read(0, SIZE)
        model = bytearray(whole)
        for offset, length in zeros:
            model[offset:offset + length] = bytes(length)
        view = chain.with_zeros(zeros)
        assert view.read(0, SIZE) == bytes(model)
        for offset, length in probes:  # pieces, across units and ranges
            length = min(length, SIZE - offset)
            assert view.read(offset, length) == bytes(model[offset:offset + length])
        for ext in view.iter_extents():
            inside = [(o, n) for o, n in zeros if o < ext.offset + ext.length and ext.offset < o + n]
            if ext.layer != ZERO:
                assert not inside, f"data extent {ext} over a zero range"
                assert chain.read(ext.offset, ext.length) == whole[ext.offset:ext.offset + ext.length]
        # every byte of the view's ZERO extents reads zero, every data extent the chain's
        assert sum(e.length for e in view.iter_extents()) == SIZE
        assert chain.read(0, SIZE) == whole  # the chain itself is unchanged


def test_the_view_is_read_only_and_leaves_the_layers_open(tmp_path: Path) -> None:
    top = chain_files(tmp_path, 1)
    with open_chain(str(top), writable=True) as chain:
        view = chain.with_zeros([(0, 64 * KiB)])
        with pytest.raises(ImageIOError, match="read-only"):
            view.write(0, b"x" * 512)
        view.close()
        assert chain.read(0, 512) == chain.read(0, 512)  # the layers still read
        chain.write(4096, b"y" * 512)  # and the chain itself still writes
    with open_chain(str(top)) as chain:
        assert chain.read(4096, 512) == b"y" * 512
