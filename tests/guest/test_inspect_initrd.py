"""The initrd reader: newc cpio archives, one after another, compressed or not."""

from __future__ import annotations

import bz2
import io
import shutil
import subprocess

import pytest

from tests.fixtures.linux_boot import compress, initrd_image, newc
from vhdfs.guest.initrd import InitrdError, read_initrd_stream

KERNEL = "6.1.0-18-amd64"


class CountingStream(io.RawIOBase):
    """A byte stream that counts what was read from it (to see reading stop early)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._data.readinto(buffer)
        self.read_bytes += n
        return n


def read(data: bytes, stop_when: set[str] | None = None):
    return read_initrd_stream(CountingStream(data), "initrd.img", stop_when)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz", "none"])
def test_modules_are_found_in_every_compression(compression):
    contents = read(initrd_image(KERNEL, ("hv_vmbus", "hv_storvsc", "hv_netvsc"), compression))
    assert {"hv_vmbus", "hv_storvsc", "hv_netvsc", "ext4"} <= contents.modules
    assert contents.complete
    # the early microcode archive comes first, uncompressed, then the main one
    assert contents.segments == ["cpio", "cpio" if compression == "none" else f"{compression} cpio"]
    assert "kernel/x86/microcode/GenuineIntel.bin" in contents.names
    assert f"usr/lib/modules/{KERNEL}/kernel/drivers/scsi/hv_storvsc.ko" in contents.names


def test_a_missing_module_is_missing():
    contents = read(initrd_image(KERNEL, ("hv_vmbus", "hv_netvsc"), "zstd"))
    assert "hv_storvsc" not in contents.modules and "hv_vmbus" in contents.modules


def test_bzip2_and_an_archive_written_by_cpio_itself():
    files = {"lib/modules/x/hv_vmbus.ko.xz": b"\0" * 100}
    contents = read(bz2.compress(newc(files, ("lib", "lib/modules", "lib/modules/x"))))
    assert contents.segments == ["bzip2 cpio"] and contents.modules == {"hv_vmbus"}
    cpio = shutil.which("cpio")
    if cpio is None:
        return  # GNU cpio is an extra cross-check where it is installed
    listing = subprocess.run([cpio, "-t", "--quiet"], input=newc(files), capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == ["lib/modules/x/hv_vmbus.ko.xz"]


def test_reading_stops_once_the_modules_asked_for_are_seen():
    # the wanted modules first, then 4 MiB of incompressible padding files
    padding = {f"usr/share/filler{i}": bytes(range(256)) * 4096 for i in range(4)}
    big = newc({"m/hv_vmbus.ko": b"x", "m/hv_storvsc.ko": b"y", **padding})
    stream = CountingStream(big)
    contents = read_initrd_stream(stream, "initrd.img", {"hv_vmbus", "hv_storvsc"})
    assert not contents.complete
    assert stream.read_bytes < len(big) // 4
    assert read(big).complete


@pytest.mark.parametrize("data, reason", [
    (b"\x02\x21\x4c\x18" + bytes(100), "compressed with lz4 (legacy), which vhdfs cannot read"),
    (b"070707" + bytes(200), "old-format (odc or binary) cpio archive"),
    (b"hello, not an initrd", "neither a cpio archive nor a compression vhdfs knows"),
    (compress(b"not a cpio archive at all", "gzip"), "does not hold a newc cpio archive"),
    (newc({"a": b"x" * 100})[:150], "the archive ends inside"),
    (compress(newc({"a": b"x"}), "gzip")[:-12], "EOFError"),
])
def test_damage_is_one_clear_error(data, reason):
    with pytest.raises(InitrdError) as caught:
        read(data)
    assert reason in str(caught.value)
