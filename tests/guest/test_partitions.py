"""vhdfs.partitions (MBR with logical partitions, GPT with its backup) and the BCD store reader."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from tests.fixtures.bcdstore import Loader, build_bcd, build_mbr_bcd, device_boot, device_gpt_partition
from tests.fixtures.regf import Key, Value, build_hive
from vhdfs.guest.bcd import BcdError, read_bcd
from vhdfs.partitions import PartitionTableError, list_partitions, read_table

MiB = 1024 * 1024


class FileDisk:
    """A raw file as a flat disk (what the partition reader needs: read and size)."""

    def __init__(self, path) -> None:
        self.name = str(path)
        self.data = path.read_bytes()
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


def sfdisk(image, script: str) -> None:
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
                   input=script.encode(), check=True, capture_output=True)


def test_mbr_primary_and_logical_partitions(tmp_path):
    image = tmp_path / "mbr.raw"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    sfdisk(image, "label: dos\nlabel-id: 0x01020304\nunit: sectors\n\n"
           "start=2048, size=8192, type=7, bootable\n"
           "start=10240, size=100000, type=5\n"
           "start=12288, size=4096, type=83\n"
           "start=18432, size=8192, type=82\n")
    table = read_table(FileDisk(image))
    assert table.scheme == "mbr" and table.disk_signature == 0x01020304
    got = [(p.number, p.start // 512, p.length // 512, p.type_code, p.bootable, p.logical)
           for p in table.partitions]
    assert got == [(1, 2048, 8192, "0x07", True, False), (5, 12288, 4096, "0x83", False, True),
                   (6, 18432, 8192, "0x82", False, True)]
    assert [p.type_name for p in table.partitions] == ["NTFS/exFAT", "Linux", "Linux swap"]


def test_gpt_partitions_and_backup_header(linux_raw, tmp_path):
    raw, layout = linux_raw
    parts = list_partitions(FileDisk(raw))
    assert [(p.number, p.start, p.length, p.guid, p.type_code) for p in parts] == [
        (q["number"], q["start"], q["size"], q["partuuid"], q["type"])
        for q in layout["partitions"]]
    assert parts[0].name == "EFI System Partition" and parts[0].is_efi_system
    broken = tmp_path / "gpt.raw"
    shutil.copyfile(raw, broken)
    with open(broken, "r+b") as f:
        f.seek(512 + 16)  # the primary header's CRC32 field
        f.write(b"\x00\x00\x00\x00")
    table = read_table(FileDisk(broken))
    assert [p.guid for p in table.partitions] == [p.guid for p in parts]
    assert any("primary GPT header" in w and "using the backup GPT" in w for w in table.warnings)
    with open(broken, "r+b") as f:
        f.seek(raw.stat().st_size - 512 + 16)  # and the backup header's
        f.write(b"\x00\x00\x00\x00")
    with pytest.raises(PartitionTableError) as caught:
        read_table(FileDisk(broken))
    assert "protective MBR but no readable GPT" in str(caught.value)
    assert "sgdisk -e" in str(caught.value)


def test_no_table_and_partition_past_the_end(windows_raw, tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(bytes(4 * MiB))
    assert read_table(FileDisk(empty)).scheme == "none"
    raw, _ = windows_raw
    short = tmp_path / "short.raw"
    short.write_bytes(raw.read_bytes()[:40 * MiB])
    table = read_table(FileDisk(short))
    assert len(table.partitions) == 2
    assert any("partition 2 ends at byte" in w and "past the end of the disk" in w
               for w in table.warnings)


def test_hive_writer_and_bcd_reader_round_trip():
    signature, offset = 0x5EED1D15, 17 * MiB
    store = read_bcd(build_mbr_bcd(signature, offset, extra_offsets=(MiB,)))
    loader = store.default_loader
    assert loader.osdevice.scheme == "mbr"
    assert (loader.osdevice.disk_signature, loader.osdevice.partition_offset) == (signature, offset)
    assert loader.path == "\\Windows\\system32\\winload.exe" and loader.systemroot == "\\Windows"
    assert len(store.loaders) == 2 and store.display_order[0] == store.default
    disk, part = str(uuid.uuid4()).upper(), str(uuid.uuid4()).upper()
    gpt = read_bcd(build_bcd([Loader("w", device_boot(), device_gpt_partition(disk, part))]))
    device = gpt.default_loader.osdevice
    assert (device.scheme, device.disk_guid, device.partition_guid) == ("gpt", disk, part)
    assert gpt.default_loader.device.kind == "boot"
    with pytest.raises(BcdError, match="not a readable registry hive"):
        read_bcd(b"regf" + bytes(8000))
    no_default = build_hive(Key("root", subkeys=[Key("Objects")]))
    assert read_bcd(no_default).default_loader is None
    hive = build_hive(Key("R", [Value.dword("n", 7), Value.sz("s", "é")], [Key("Sub")]))
    from io import BytesIO

    from Registry import Registry
    root = Registry.Registry(BytesIO(hive)).root()
    assert root.value("n").value() == 7 and root.value("s").value() == "é"
    assert [k.name() for k in root.subkeys()] == ["Sub"]
