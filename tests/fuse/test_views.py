"""What a mount shows: disk.raw, disk.vhd and the partition files, byte for byte."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import subprocess

import pytest

from tests.fuse.conftest import MiB, add_child, fill_layer, flat_reference, make_chain, vhdfs
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_disk_raw_equals_convert_to_raw(tmp_path, mount, depth):
    top = make_chain(tmp_path / "chain", depth, seed=depth)[-1]
    expected = flat_reference(top, tmp_path / "flat.raw")
    mounted = mount(top)
    assert sorted(os.listdir(mounted.mountpoint)) == ["disk.raw", "disk.vhd"]  # no table
    assert mounted.file().read_bytes() == expected
    # Reads that straddle the end of the disk are cut there.
    with open(mounted.file(), "rb") as handle:
        assert os.pread(handle.fileno(), 4096, len(expected) - 100) == expected[-100:]
        assert os.pread(handle.fileno(), 4096, len(expected)) == b""


def _disk_with_table(folder, table: str):
    """A 2-layer chain whose base has a partition table (sfdisk) and random partitions."""
    folder.mkdir()
    raw = folder / "table.raw"
    with open(raw, "wb") as handle:
        handle.truncate(8 * MiB)
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)], input=table,
                   text=True, check=True, capture_output=True)
    base = folder / "base.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic", "--block-size", "256K")
    fill_layer(base, random.Random(3), whole_blocks=0.0, sector_runs=0)
    child = add_child(base, folder / "child.vhd")
    # Data everywhere except the table itself (the first MiB holds it, and GPT's backup).
    rng = random.Random(4)
    from vhdfs.sources.local import LocalFile
    from vhdfs.vhd.layer import Layer
    with Layer(LocalFile(child, writable=True), writable=True) as layer:
        for _ in range(40):
            first = rng.randrange(2048, (7 * MiB) // 512)
            layer.write(first * 512, rng.randbytes(512 * rng.randint(1, 24)))
    return child


@pytest.mark.parametrize("scheme, table, names", [
    ("mbr", "label: dos\nstart=2048, size=4096, type=7\nstart=6144, size=8192, type=83\n",
     {"p1": (1 * MiB, 2 * MiB), "p2": (3 * MiB, 4 * MiB)}),
    ("gpt", "label: gpt\nstart=2048, size=2048\nstart=4096, size=8192\n",
     {"p1": (1 * MiB, 1 * MiB), "p2": (2 * MiB, 4 * MiB)}),
], ids=["mbr", "gpt"])
def test_partition_files_are_windows_on_the_disk(tmp_path, mount, scheme, table, names):
    top = _disk_with_table(tmp_path / scheme, table)
    flat = flat_reference(top, tmp_path / "flat.raw")
    mounted = mount(top)
    assert sorted(os.listdir(mounted.mountpoint)) == ["disk.raw", "disk.vhd", *sorted(names)]
    for name, (start, length) in names.items():
        data = mounted.file(name).read_bytes()
        assert len(data) == length
        assert data == flat[start:start + length]
        assert data.strip(b"\0"), f"{name} should hold the random data written into it"


def test_disk_vhd_is_a_fixed_vhd_that_qemu_reads_back(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 2)[-1]
    flat = flat_reference(top, tmp_path / "flat.raw")
    mounted = mount(top)
    vhd = mounted.file("disk.vhd")
    assert vhd.stat().st_size == len(flat) + FOOTER_SIZE
    data = vhd.read_bytes()
    assert data[:len(flat)] == flat
    footer = Footer.parse(data[len(flat):], "disk.vhd", len(flat))
    assert footer.disk_type == DiskType.FIXED and footer.current_size == len(flat)
    # The footer (unique id included) stays the same for the whole mount.
    assert vhd.read_bytes()[len(flat):] == data[len(flat):]
    # qemu sizes disks of creators it does not know by CHS geometry: ask for the current size.
    opts = f"driver=vpc,force_size_calc=current_size,file.filename={vhd}"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "--image-opts", opts],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "vpc" and info["virtual-size"] == len(flat)
    # (qemu probes VHDs by a footer copy at offset 0, which fixed VHDs lack: name the format.)
    plain = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(vhd)],
                                      check=True, capture_output=True, text=True).stdout)
    assert plain["virtual-size"] == len(flat)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", "--image-opts", opts, str(back)],
                   check=True, capture_output=True)
    assert back.read_bytes() == flat


def test_read_only_mount_refuses_every_write(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 2)[-1]
    before = top.read_bytes()
    mounted = mount(top)
    for name in ("disk.raw", "disk.vhd"):
        assert stat.S_IMODE(mounted.file(name).stat().st_mode) == 0o444
        with pytest.raises(OSError) as caught:
            os.open(mounted.file(name), os.O_WRONLY)
        assert caught.value.errno == errno.EROFS
    assert mounted.stop() == 0
    assert top.read_bytes() == before


def test_writable_mount_keeps_disk_vhd_and_sizes_fixed(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 2)[-1]
    mounted = mount(top, "--rw")
    assert stat.S_IMODE(mounted.file().stat().st_mode) == 0o644
    assert stat.S_IMODE(mounted.file("disk.vhd").stat().st_mode) == 0o444
    with pytest.raises(PermissionError):
        os.open(mounted.file("disk.vhd"), os.O_WRONLY)
    size = mounted.file().stat().st_size
    for new_size in (0, size + 512):
        with pytest.raises(OSError) as caught:
            os.truncate(mounted.file(), new_size)
        assert caught.value.errno == errno.EPERM
    fd = os.open(mounted.file(), os.O_WRONLY)
    try:
        with pytest.raises(OSError) as caught:  # writing past the end: the disk is full
            os.pwrite(fd, b"x" * 512, size)
        assert caught.value.errno == errno.ENOSPC
        assert os.pwrite(fd, b"y" * 512, size - 256) == 256  # cut at the end
    finally:
        os.close(fd)
    assert mounted.file().read_bytes()[-256:] == b"y" * 256
    assert mounted.file().stat().st_size == size
