"""Model-based tests: random chains and random writes against an in-memory disk.

Depth 1-4, block sizes 512 KiB and 2 MiB (mixed within a chain), sizes that are not block
multiples, fixed or dynamic base. Every layer is written through Chain.write (arbitrary
alignment), closed, reopened as the parent of the next; the result must equal the model
through Chain.read, `convert --to raw` and `convert --to dynamic` alike.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdfs.chain import ZERO
from vhdfs.convert import convert
from vhdfs.create import create_differencing, create_dynamic, create_fixed, parent_info_of
from vhdfs.resolve import open_chain

KIB = 1024
BLOCK_SIZES = [512 * KIB, 2048 * KIB]


@st.composite
def chains(draw):
    sectors = draw(st.integers(min_value=1, max_value=(5 * 1024 * 1024) // 512))
    size = sectors * 512
    depth = draw(st.integers(1, 4))
    base_fixed = draw(st.booleans())
    block_sizes = [draw(st.sampled_from(BLOCK_SIZES)) for _ in range(depth)]
    layers = []
    for _ in range(depth):
        writes = []
        for _ in range(draw(st.integers(0, 6))):
            offset = draw(st.integers(0, size - 1))
            length = draw(st.integers(1, min(96 * KIB, size - offset)))
            fill = draw(st.integers(0, 255))
            writes.append((offset, length, fill))
        layers.append(writes)
    return size, base_fixed, block_sizes, layers


def pattern(offset: int, length: int, fill: int) -> bytes:
    """Bytes that differ per position, so misplaced data cannot pass as right."""
    if fill == 0:
        return bytes(length)  # zero writes matter too: they hide parent data
    rnd = random.Random(offset * 1000003 + fill)
    return rnd.randbytes(length)


def build(folder: Path, size, base_fixed, block_sizes, layers) -> tuple[Path, bytearray]:
    model = bytearray(size)
    paths = []
    for depth, writes in enumerate(layers):
        path = folder / f"layer{depth}.vhd"
        if depth == 0:
            if base_fixed:
                create_fixed(path, size)
            else:
                create_dynamic(path, size, block_sizes[0])
        else:
            with open_chain(str(paths[-1])) as parent_chain:
                info = parent_info_of(paths[-1], parent_chain.top)
            create_differencing(path, info, block_sizes[depth])
        with open_chain(str(path), writable=True) as chain:
            for offset, length, fill in writes:
                data = pattern(offset, length, fill)
                chain.write(offset, data)
                model[offset:offset + length] = data
            # read-your-writes before any flush
            assert chain.read(0, size) == model
        paths.append(path)
    return paths[-1], model


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.randoms(use_true_random=False))
def test_chain_flattens_to_model(spec, rnd):
    size, base_fixed, block_sizes, layers = spec
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        top, model = build(folder, size, base_fixed, block_sizes, layers)
        with open_chain(str(top)) as chain:
            assert chain.size == size
            assert chain.read(0, size) == model
            for _ in range(10):  # sub-ranges at any alignment
                offset = rnd.randrange(size)
                length = rnd.randrange(1, size - offset + 1)
                assert chain.read(offset, length) == model[offset:offset + length]
            # extents cover the disk exactly, in order, and ZERO extents are zeros
            pos = 0
            for ext in chain.iter_extents():
                assert ext.offset == pos and ext.length > 0
                if ext.layer == ZERO:
                    assert model[pos:pos + ext.length] == bytes(ext.length)
                pos += ext.length
            assert pos == size
            convert(chain, folder / "flat.raw", "raw")
            convert(chain, folder / "flat.vhd", "dynamic", block_size=block_sizes[-1])
            convert(chain, folder / "fixed.vhd", "fixed")
        assert (folder / "flat.raw").read_bytes() == model
        with open_chain(str(folder / "flat.vhd")) as flat:
            assert flat.read(0, size) == model
        fixed = (folder / "fixed.vhd").read_bytes()
        assert fixed[:size] == model and fixed[size:size + 8] == b"conectix"


def test_raw_output_is_sparse_and_reads_no_zero_extents(tmp_path):
    size = 64 * 1024 * 1024
    base = tmp_path / "base.vhd"
    create_dynamic(base, size)
    with open_chain(str(base), writable=True) as chain:
        chain.write(10 * 1024 * 1024, b"x" * 4096)
    with open_chain(str(base)) as chain:
        reads = []
        layer = chain.layers[0]
        original = layer.read_into
        layer.read_into = lambda off, view: reads.append(len(view)) or original(off, view)
        stats = convert(chain, tmp_path / "out.raw", "raw")
    assert sum(reads) == 2 * 1024 * 1024  # one allocated block, nothing else read
    assert stats.data_written == 64 * KIB
    st_ = os.stat(tmp_path / "out.raw")
    assert st_.st_size == size and st_.st_blocks * 512 <= 256 * KIB


def test_write_lands_in_top_layer_only(tmp_path):
    base = tmp_path / "base.vhd"
    create_dynamic(base, 8 * 1024 * 1024)
    with open_chain(str(base), writable=True) as chain:
        chain.write(0, b"p" * 8192)
    before = base.read_bytes()
    with open_chain(str(base)) as chain:
        info = parent_info_of(base, chain.top)
    child = tmp_path / "child.vhd"
    create_differencing(child, info)
    with open_chain(str(child), writable=True) as chain:
        chain.write(100, b"c" * 1000)
        assert chain.read(0, 2048) == b"p" * 100 + b"c" * 1000 + b"p" * 948
    assert base.read_bytes() == before
    with open_chain(str(child)) as chain:
        assert chain.read(0, 2048) == b"p" * 100 + b"c" * 1000 + b"p" * 948
        # only sectors 0-2 of block 0 are in the child; the rest comes from the base
        kinds = [(e.offset, e.length, e.layer) for e in chain.extents(0, 8192)]
        assert kinds == [(0, 1536, 0), (1536, 8192 - 1536, 1)]
