"""What vhdfs writes, qemu-img accepts (check) and reads identically (compare); what qemu-img
writes, vhdfs reads and writes into, and qemu-img then still accepts. Differencing VHDX,
which qemu does not open at all, is cross-checked against libvhdi instead."""

from __future__ import annotations

import random
import subprocess

import pytest
from vhdxtools import qemu_compare

from tests.tooling import need, run, vhdimount
from vhdfs.convert import convert
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.resolve import open_chain

MiB = 1 << 20


def qemu_check(image) -> subprocess.CompletedProcess:
    need("qemu-img")
    return subprocess.run(["qemu-img", "check", "-f", "vhdx", str(image)], capture_output=True,
                          text=True)


def _write_random(image, model: bytearray, count: int, seed: int, *, max_length: int = 300_000,
                  flush_every: int = 4) -> None:
    rng = random.Random(seed)
    with open_chain(str(image), writable=True) as chain:
        for number in range(count):
            length = rng.randrange(1, max_length)
            offset = rng.randrange(0, chain.size - length)
            data = rng.randbytes(length)
            chain.write(offset, data)
            model[offset:offset + length] = data
            if number % flush_every == flush_every - 1:
                chain.flush()


def _agree_with_qemu(image, model: bytearray, tmp_path) -> None:
    checked = qemu_check(image)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    raw = tmp_path / "model.raw"
    raw.write_bytes(bytes(model))
    verdict = qemu_compare(image, raw)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    with open_chain(str(image)) as chain:
        assert chain.read(0, chain.size) == bytes(model)


@pytest.mark.parametrize(("fixed", "block_mib"), [(False, 32), (False, 1), (False, 256),
                                                  (True, 32), (True, 1)],
                         ids=["dynamic-32M", "dynamic-1M", "dynamic-256M", "fixed-32M", "fixed-1M"])
def test_qemu_accepts_what_we_create_and_write(tmp_path, fixed, block_mib):
    size = 96 * MiB + 4096  # a last block shorter than the others
    image = tmp_path / "ours.vhdx"
    create_vhdx(image, size, fixed=fixed, block_size=block_mib * MiB)
    model = bytearray(size)
    _agree_with_qemu(image, model, tmp_path)  # empty
    _write_random(image, model, 24, seed=block_mib)
    _agree_with_qemu(image, model, tmp_path)
    info = run("qemu-img", "info", "--output=json", image)
    assert f'"cluster-size": {block_mib * MiB}' in info and f'"virtual-size": {size}' in info
    _write_random(image, model, 8, seed=7)  # a second session over the first
    _agree_with_qemu(image, model, tmp_path)


@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed"])
def test_4k_sectors_which_qemu_refuses_read_as_libvhdi(tmp_path, fixed):
    """qemu 7.2 opens VHDX with 512-byte logical sectors only ("Operation not supported"):
    a 4 KiB-sector file is checked against libvhdi."""
    size = 24 * MiB
    image = tmp_path / "4k.vhdx"
    create_vhdx(image, size, fixed=fixed, block_size=MiB, logical_sector_size=4096)
    model = bytearray(size)
    _write_random(image, model, 20, seed=5)
    refused = qemu_check(image)
    assert refused.returncode != 0 and "not supported" in refused.stderr
    with open_chain(str(image)) as chain:
        assert chain.top.logical_sector_size == 4096
        assert chain.read(0, size) == bytes(model)
    with vhdimount(image, tmp_path / "mnt") as flat:
        assert flat.read_bytes() == bytes(model)


def test_qemu_accepts_our_conversions(tmp_path):
    size = 40 * MiB
    source = tmp_path / "source.vhdx"
    create_vhdx(source, size, block_size=MiB)
    model = bytearray(size)
    _write_random(source, model, 30, seed=3)
    with open_chain(str(source)) as chain:
        for fixed in (False, True):
            out = tmp_path / f"converted-{fixed}.vhdx"
            convert(chain, out, "vhdx", fixed=fixed)
            _agree_with_qemu(out, model, tmp_path)


@pytest.mark.parametrize("options", ["subformat=dynamic,block_size=1M",
                                     "subformat=fixed,block_state_zero=off",
                                     "subformat=fixed,block_state_zero=on",
                                     "subformat=dynamic,block_size=8M,log_size=4M"],
                         ids=["dynamic", "fixed", "fixed-zero-state", "dynamic-log4M"])
def test_we_write_into_what_qemu_writes_and_qemu_reads_it(tmp_path, options):
    need("qemu-io")
    size = 48 * MiB
    image = tmp_path / "qemu.vhdx"
    run("qemu-img", "create", "-q", "-f", "vhdx", "-o", options, image, str(size))
    model = bytearray(size)
    for offset, length, pattern in [(0, 4096, 0x11), (5 * MiB + 512, 70_000, 0x22),
                                    (size - 4096, 4096, 0x33)]:
        run("qemu-io", "-f", "vhdx", "-c", f"write -q -P {pattern} {offset} {length}", image)
        model[offset:offset + length] = bytes([pattern]) * length
    _write_random(image, model, 20, seed=11)
    _agree_with_qemu(image, model, tmp_path)
    # ... and qemu writes into what we wrote.
    run("qemu-io", "-f", "vhdx", "-c", f"write -q -P 0x44 {20 * MiB - 512} 8192", image)
    model[20 * MiB - 512:20 * MiB + 7680] = b"\x44" * 8192
    _agree_with_qemu(image, model, tmp_path)


def test_qemu_does_not_open_differencing_vhdx_but_libvhdi_reads_ours(tmp_path):
    """qemu 7.2 refuses any VHDX with a parent ("Operation not supported"), so an .avhdx is
    checked against libvhdi (which reads lower-case parent_linkage, as vhdfs writes it)."""
    size = 16 * MiB
    base = tmp_path / "base.vhdx"
    create_vhdx(base, size, block_size=MiB)
    model = bytearray(size)
    _write_random(base, model, 10, seed=1)
    with open_chain(str(base)) as parent:
        create_vhdx_differencing(tmp_path / "mid.avhdx", base, parent.top)
    _write_random(tmp_path / "mid.avhdx", model, 10, seed=2, max_length=70_000)
    with open_chain(str(tmp_path / "mid.avhdx")) as parent:
        create_vhdx_differencing(tmp_path / "top.avhdx", tmp_path / "mid.avhdx", parent.top)
    _write_random(tmp_path / "top.avhdx", model, 10, seed=3, max_length=70_000)
    refused = subprocess.run(["qemu-img", "info", str(tmp_path / "top.avhdx")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "not supported" in refused.stderr
    with open_chain(str(tmp_path / "top.avhdx")) as chain:
        assert chain.read(0, size) == bytes(model)
    with vhdimount(tmp_path / "top.avhdx", tmp_path / "mnt") as flat:
        assert flat.read_bytes() == bytes(model)


def test_a_header_naming_an_empty_log_stops_qemu_writing_until_we_write_once(tmp_path):
    """What a crash between setting the log GUID and the first entry leaves: qemu reads it
    but refuses metadata writes ("Operation not supported", its writer expects an empty
    log GUID); one vhdfs write session clears the GUID."""
    need("qemu-io")
    import uuid

    from vhdfs.vhdx import format as fmt

    image = tmp_path / "d.vhdx"
    create_vhdx(image, 16 * MiB, block_size=MiB)
    raw = image.read_bytes()
    with open(image, "r+b") as f:
        for at in fmt.HEADER_OFFSETS:
            header = fmt.HEADER.parse(raw[at:at + fmt.HEADER_SIZE]).tail.value
            fields = {k: header[k] for k in ("sequence_number", "file_write_guid", "data_write_guid",
                                             "log_version", "version", "log_length", "log_offset")}
            f.seek(at)
            f.write(fmt.build_header(dict(fields, log_guid=uuid.uuid4().bytes_le)))
    refused = subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 1 0 4096", str(image)],
                             capture_output=True, text=True)
    assert "Operation not supported" in refused.stdout + refused.stderr
    model = bytearray(16 * MiB)
    _write_random(image, model, 3, seed=4)
    run("qemu-io", "-f", "vhdx", "-c", "write -q -P 1 0 4096", image)
    model[:4096] = b"\x01" * 4096
    _agree_with_qemu(image, model, tmp_path)
