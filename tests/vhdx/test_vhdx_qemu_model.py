"""Model-based: VHDX images written by qemu-img / qemu-io read as the model and as qemu-img says."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhdxtools import qemu_compare

from tests.tooling import need, run
from vhdfs.convert import convert
from vhdfs.resolve import open_chain
from vhdfs.vhdx import format as fmt

MiB = 1 << 20
SIZE = 16 * MiB


def _qemu_image(path, size: int, writes: list[tuple[int, int, int]], **options: str) -> bytes:
    """Create a VHDX with qemu-img, write patterns through qemu-io; return the model's bytes."""
    need("qemu-io")
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    run("qemu-img", "create", "-q", "-f", "vhdx", *(["-o", opts] if opts else []), path, str(size))
    model = bytearray(size)
    commands: list[str] = []
    for offset, length, pattern in writes:
        commands += ["-c", f"write -q -P {pattern} {offset} {length}"]
        model[offset:offset + length] = bytes([pattern]) * length
    if commands:
        subprocess.run(["qemu-io", "-f", "vhdx", *commands, str(path)], check=True,
                       capture_output=True)
    return bytes(model)


writes_strategy = st.lists(
    st.tuples(st.integers(0, SIZE // 512 - 1), st.integers(1, 3 * 2048), st.integers(1, 255)).map(
        lambda t: (t[0] * 512, min(t[1] * 512, SIZE - t[0] * 512), t[2])),
    max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=writes_strategy, block_mib=st.sampled_from([1, 2, 8]))
def test_qemu_written_images_read_as_the_model(tmp_path, writes, block_mib):
    image = tmp_path / "model.vhdx"
    model = _qemu_image(image, SIZE, writes, block_size=str(block_mib * MiB))
    with open_chain(str(image)) as chain:
        assert chain.top.block_size == block_mib * MiB
        assert chain.read(0, SIZE) == model
        # The extent map never sends a written byte to ZERO.
        for ext in chain.iter_extents():
            if ext.is_zero:
                assert model[ext.offset:ext.offset + ext.length] == bytes(ext.length)


@pytest.mark.parametrize("options", [
    {},
    {"subformat": "fixed", "block_state_zero": "off"},
    {"subformat": "fixed", "block_state_zero": "on"},
    {"subformat": "dynamic", "block_size": str(32 * MiB), "log_size": str(4 * MiB)},
], ids=["dynamic", "fixed", "fixed-zero-state", "dynamic-32M-log4M"])
def test_qemu_images_read_as_qemu_img(tmp_path, options):
    size = 48 * MiB
    image = tmp_path / "q.vhdx"
    writes = [(0, 4096, 0x11), (MiB - 512, 1024, 0x22), (5 * MiB + 3 * 512, 7 * 512, 0x33),
              (size - 4096, 4096, 0x44), (33 * MiB, 2 * MiB, 0x55)]
    model = _qemu_image(image, size, writes, **options)
    with open_chain(str(image)) as chain:
        layer = chain.top
        assert chain.read(0, size) == model
        if options.get("subformat") == "fixed":
            assert layer.disk_type.name == "FIXED"
            expected = fmt.PAYLOAD_BLOCK_ZERO if options["block_state_zero"] == "on" else \
                fmt.PAYLOAD_BLOCK_FULLY_PRESENT
            untouched = 16 * MiB // layer.block_size  # no write lands in 16-24 MiB
            assert layer.block_size == 8 * MiB
            assert layer.block_state(untouched) == expected
        convert(chain, tmp_path / "ours.raw", "raw")
    verdict = qemu_compare(image, tmp_path / "ours.raw")
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
