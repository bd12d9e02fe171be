"""Model-based: random writes into chains of 1-3 VHDX layers (fixed or dynamic base,
differencing .avhdx tops) read back as an in-memory model; so does their conversion."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdfs.convert import convert
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.resolve import open_chain
from vhdfs.vhdx import layer as vhdx_layer

MiB = 1 << 20

write_op = st.tuples(st.floats(0, 1), st.sampled_from([1, 100, 512, 4096, 5000, 65536, MiB,
                                                       MiB + 4096, 2 * MiB + 7]),
                     st.booleans())  # (where, length, flush after it)


def _apply_writes(image, model: bytearray, ops, rng: random.Random) -> None:
    with open_chain(str(image), writable=True) as chain:
        for where, length, flush in ops:
            length = min(length, chain.size)
            offset = int(where * (chain.size - length))
            data = rng.randbytes(length)
            chain.write(offset, data)
            model[offset:offset + length] = data
            if flush:
                chain.flush()


def _reads_as(image, model: bytearray) -> None:
    with open_chain(str(image)) as chain:
        assert chain.warnings == []
        assert chain.top.describe()["log"] == "clean"
        assert chain.read(0, chain.size) == bytes(model)
        for ext in chain.iter_extents():  # nothing written is ever sent to ZERO
            if ext.is_zero:
                assert model[ext.offset:ext.offset + ext.length] == bytes(ext.length)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(depth=st.integers(1, 3), fixed_base=st.booleans(), lss=st.sampled_from([512, 4096]),
       block_mib=st.sampled_from([1, 2]), size=st.sampled_from([5 * MiB + 3 * 4096, 8 * MiB]),
       layers=st.lists(st.lists(write_op, max_size=6), min_size=3, max_size=3),
       reopen=st.lists(write_op, max_size=3), seed=st.integers(0, 2**32 - 1),
       small_flushes=st.booleans())
def test_writes_into_vhdx_chains_read_as_the_model(tmp_path_factory, monkeypatch, depth,
                                                   fixed_base, lss, block_mib, size, layers,
                                                   reopen, seed, small_flushes):
    folder = tmp_path_factory.mktemp("chain")
    rng = random.Random(seed)
    if small_flushes:  # many commits, each with few sectors
        monkeypatch.setattr(vhdx_layer, "AUTO_FLUSH_SECTORS", 1)
    model = bytearray(size)
    image = folder / "base.vhdx"
    create_vhdx(image, size, fixed=fixed_base, block_size=block_mib * MiB,
                logical_sector_size=lss)
    _apply_writes(image, model, layers[0], rng)
    _reads_as(image, model)
    for number in range(1, depth):
        child = folder / f"child{number}.avhdx"
        with open_chain(str(image)) as parent:
            create_vhdx_differencing(child, image, parent.top, block_size=block_mib * MiB)
        image = child
        _apply_writes(image, model, layers[number], rng)
        _reads_as(image, model)
    _apply_writes(image, model, reopen, rng)  # a second session on the same top
    _reads_as(image, model)
    with open_chain(str(image)) as chain:
        assert len(chain.layers) == depth
        for fixed in (False, True):
            out = folder / f"flat-{fixed}.vhdx"
            convert(chain, out, "vhdx", fixed=fixed, block_size=block_mib * MiB)
            with open_chain(str(out)) as flat:
                assert flat.top.logical_sector_size == lss
                assert flat.top.disk_type.name == ("FIXED" if fixed else "DYNAMIC")
            _reads_as(out, model)
