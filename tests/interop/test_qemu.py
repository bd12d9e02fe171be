"""qemu-img reads and writes fixed and dynamic VHDs: we must agree with it byte for byte."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.tooling import need, run
from vhdfs.convert import convert
from vhdfs.create import create_dynamic
from vhdfs.resolve import open_chain

MIB = 1 << 20


def qemu_writes(image: Path, fmt: str, writes: list[tuple[int, int, int]]) -> None:
    need("qemu-io")
    for offset, length, fill in writes:
        run("qemu-io", "-f", fmt, "-c", f"write -P {fill} {offset} {length}", str(image))


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("force_size", [False, True])
def test_qemu_made_images_read_like_qemu(tmp_path, subformat, force_size):
    need("qemu-img")
    image = tmp_path / "q.vhd"
    opts = f"subformat={subformat}" + (",force_size=on" if force_size else "")
    run("qemu-img", "create", "-q", "-f", "vpc", "-o", opts, str(image), "37M")
    rnd = random.Random(7)
    writes = [(rnd.randrange(0, 36 * MIB) // 512 * 512, rnd.randrange(1, 300) * 512,
               rnd.randrange(1, 255)) for _ in range(12)]
    qemu_writes(image, "vpc", writes)
    reference = tmp_path / "ref.raw"
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(image), str(reference))
    with open_chain(str(image)) as chain:
        assert chain.size == reference.stat().st_size
        assert chain.read(0, chain.size) == reference.read_bytes()
        convert(chain, tmp_path / "ours.raw", "raw")
    assert (tmp_path / "ours.raw").read_bytes() == reference.read_bytes()


def _model_image(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    raw = bytearray(size)
    rnd = random.Random(size)
    for _ in range(20):
        offset = rnd.randrange(size - 70000)
        chunk = rnd.randbytes(rnd.randrange(1, 70000))
        raw[offset:offset + len(chunk)] = chunk
    path = tmp_path / "model.raw"
    path.write_bytes(bytes(raw))
    return path, bytes(raw)


@pytest.mark.parametrize("to", ["fixed", "dynamic"])
@pytest.mark.parametrize("size", [64 * MIB, 963 * 8 * 17 * 512])  # inexact and CHS-exact sizes
def test_our_images_read_identically_by_qemu(tmp_path, to, size):
    need("qemu-img")
    model_path, _ = _model_image(tmp_path, size)
    out = tmp_path / f"ours-{to}.vhd"
    with open_chain(str(model_path), allow_raw=True) as chain:
        convert(chain, out, to)
    info = run("qemu-img", "info", "-f", "vpc", str(out))
    assert f"({size} bytes)" in info  # qemu sees exactly our size, without options
    result = run("qemu-img", "compare", "-f", "vpc", "-F", "raw", str(out), str(model_path))
    assert "Images are identical" in result


def test_dynamic_writes_of_ours_match_qemu_io_on_the_same_disk(tmp_path):
    """The same writes through qemu-io and through our writer give the same disk."""
    need("qemu-img")
    size = 20 * MIB
    ours, theirs = tmp_path / "ours.vhd", tmp_path / "theirs.vhd"
    create_dynamic(ours, size, 512 * 1024)
    run("qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on",
        str(theirs), str(size))
    writes = [(0, 4096, 1), (3 * MIB + 512, 1024, 2), (19 * MIB, MIB, 3), (512 * 1024, 512, 4)]
    qemu_writes(theirs, "vpc", writes)
    with open_chain(str(ours), writable=True) as chain:
        for offset, length, fill in writes:
            chain.write(offset, bytes([fill]) * length)
    result = run("qemu-img", "compare", "-f", "vpc", "-F", "vpc", str(ours), str(theirs))
    assert "Images are identical" in result
