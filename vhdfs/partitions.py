"""The partition table of a flat disk (MBR with logical partitions, or GPT).

`read_table(disk)` and `list_partitions(disk)` work on anything with `.read(offset, length)` and
`.size` (a `Chain`, or a raw file wrapper in tests). Partition numbers follow Linux: MBR primary
entries are 1-4 by slot, logical partitions 5 and up in chain order; GPT entries are their slot
index + 1. A disk without a table gives an empty list (the guest tools then treat the whole disk
as volume 1 when it holds a file system).

The two tables are small fixed structures, declared once here with construct; file systems are
read by The Sleuth Kit (vhdfs.guest), never by hand.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from construct import Array, Bytes, Const, Int8ul, Int32ul, Int64ul, Padding, Struct

from vhdfs.errors import FormatError

SECTOR = 512
MAX_LOGICAL = 128  # guard against EBR loops
MAX_GPT_ENTRIES = 1024

MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_PROTECTIVE = 0xEE

MBR_TYPE_NAMES = {
    0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16", 0x07: "NTFS/exFAT",
    0x0B: "FAT32", 0x0C: "FAT32 (LBA)", 0x0E: "FAT16 (LBA)", 0x0F: "Extended (LBA)",
    0x11: "Hidden FAT12", 0x12: "Compaq diagnostics", 0x14: "Hidden FAT16 <32M",
    0x16: "Hidden FAT16", 0x17: "Hidden NTFS/exFAT", 0x1B: "Hidden FAT32",
    0x1C: "Hidden FAT32 (LBA)", 0x1E: "Hidden FAT16 (LBA)", 0x27: "Windows recovery",
    0x42: "Windows dynamic disk", 0x82: "Linux swap", 0x83: "Linux", 0x85: "Linux extended",
    0x8E: "Linux LVM", 0xA5: "FreeBSD", 0xA6: "OpenBSD", 0xA8: "Darwin UFS", 0xAF: "HFS/HFS+",
    0xEE: "GPT protective", 0xEF: "EFI System (FAT)", 0xFD: "Linux RAID",
}

GPT_TYPE_NAMES = {
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery",
    "5808C8AA-7E8F-42E0-85D2-E1E90434CFB3": "Windows LDM metadata",
    "AF9B60A0-1431-4F62-BC68-3311714A69AD": "Windows LDM data",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "44479540-F297-41B2-9AF7-D131D5F0458A": "Linux root (x86)",
    "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM64)",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS+",
}
GPT_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

_MBR_ENTRY = Struct(
    "status" / Int8ul,
    "chs_first" / Bytes(3),
    "type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_first" / Int32ul,
    "sectors" / Int32ul,
)
_MBR = Struct(
    "code" / Bytes(440),
    "disk_signature" / Int32ul,
    "reserved" / Bytes(2),
    "entries" / Array(4, _MBR_ENTRY),
    "boot_signature" / Bytes(2),
)
_GPT_HEADER = Struct(
    "signature" / Const(b"EFI PART"),
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,
    Padding(4),
    "current_lba" / Int64ul,
    "backup_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "entries_lba" / Int64ul,
    "entry_count" / Int32ul,
    "entry_size" / Int32ul,
    "entries_crc32" / Int32ul,
)
_GPT_ENTRY = Struct(
    "type_guid" / Bytes(16),
    "unique_guid" / Bytes(16),
    "first_lba" / Int64ul,
    "last_lba" / Int64ul,
    "attributes" / Int64ul,
    "name" / Bytes(72),
)
GPT_ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2


class FlatDisk(Protocol):
    name: str  # what messages call the disk (a chain: its top layer's file)
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class PartitionTableError(FormatError):
    """The disk has a partition table that cannot be read."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as Linux numbers them (sdX<number>)
    start: int  # bytes from the start of the disk
    length: int  # bytes
    type_name: str  # "NTFS/exFAT", "EFI System", ...
    scheme: str  # "mbr" or "gpt"
    type_code: str  # MBR: "0x07"; GPT: the type GUID in upper case
    bootable: bool = False  # MBR active flag; GPT legacy-BIOS-bootable attribute
    guid: str | None = None  # GPT unique partition GUID (upper case)
    name: str = ""  # GPT partition name
    logical: bool = False  # inside an MBR extended partition

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def is_efi_system(self) -> bool:
        return self.type_code in (GPT_ESP, "0xef")


@dataclass
class PartitionTable:
    scheme: str  # "mbr", "gpt" or "none"
    partitions: list[Partition] = field(default_factory=list)
    disk_signature: int | None = None  # MBR: the 32-bit NT disk signature (also kept on GPT disks)
    disk_guid: str | None = None  # GPT
    warnings: list[str] = field(default_factory=list)


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def _looks_like_boot_sector(sector: bytes) -> bool:
    """A volume boot record (a file system on the whole disk), not an MBR.

    Both end in 55 AA; a VBR starts with a jump and carries a BPB or a file system name.
    """
    if sector[3:11] in (b"NTFS    ", b"EXFAT   "):
        return True
    if sector[0] not in (0xEB, 0xE9):
        return False
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    return bytes_per_sector in (512, 1024, 2048, 4096) and (
        sector[54:59] == b"FAT12" or sector[54:59] == b"FAT16" or sector[82:87] == b"FAT32")


def read_table(disk: FlatDisk) -> PartitionTable:
    """The partition table of `disk`; scheme "none" when there is none."""
    name = disk.name
    sector0 = disk.read(0, SECTOR)
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa" or _looks_like_boot_sector(sector0):
        return PartitionTable("none")
    mbr = _MBR.parse(sector0)
    entries = [e for e in mbr.entries if e.type != 0 and e.sectors != 0]
    if any(e.status not in (0x00, 0x80) for e in entries):
        return PartitionTable("none")
    if any(e.type == MBR_PROTECTIVE for e in entries):
        table = _read_gpt(disk, name)
        table.disk_signature = mbr.disk_signature or None
        return table
    return _read_mbr(disk, name, mbr)


def list_partitions(disk: FlatDisk) -> list[Partition]:
    """The partitions of `disk` in number order (empty without a partition table)."""
    return read_table(disk).partitions


def _read_mbr(disk: FlatDisk, name: str, mbr) -> PartitionTable:
    table = PartitionTable("mbr", disk_signature=mbr.disk_signature)
    for slot, entry in enumerate(mbr.entries, start=1):
        if entry.type == 0 or entry.sectors == 0:
            continue
        if entry.type in MBR_EXTENDED:
            _read_logical(disk, name, entry.lba_first, table)
            continue
        table.partitions.append(_mbr_partition(slot, entry, 0, logical=False))
    table.partitions.sort(key=lambda p: p.number)
    _check_bounds(disk, table)
    return table


def _mbr_partition(number: int, entry, base_lba: int, logical: bool) -> Partition:
    return Partition(
        number=number, start=(base_lba + entry.lba_first) * SECTOR, length=entry.sectors * SECTOR,
        type_name=MBR_TYPE_NAMES.get(entry.type, f"type 0x{entry.type:02x}"), scheme="mbr",
        type_code=f"0x{entry.type:02x}", bootable=entry.status == 0x80, logical=logical)


def _read_logical(disk: FlatDisk, name: str, extended_lba: int, table: PartitionTable) -> None:
    """Walk the chain of extended boot records (each: one logical entry + a link to the next)."""
    ebr_lba = extended_lba
    seen: set[int] = set()
    number = 5
    while ebr_lba not in seen and len(seen) < MAX_LOGICAL:
        seen.add(ebr_lba)
        raw = disk.read(ebr_lba * SECTOR, SECTOR)
        if len(raw) < SECTOR or raw[510:512] != b"\x55\xaa":
            table.warnings.append(f"{name}: extended boot record at sector {ebr_lba} has no "
                                  "55 AA signature; logical partitions after it are ignored")
            return
        ebr = _MBR.parse(raw)
        first, link = ebr.entries[0], ebr.entries[1]
        if first.type != 0 and first.sectors != 0:
            table.partitions.append(_mbr_partition(number, first, ebr_lba, logical=True))
            number += 1
        if link.type not in MBR_EXTENDED or link.sectors == 0:
            return
        ebr_lba = extended_lba + link.lba_first
    table.warnings.append(f"{name}: the chain of extended boot records loops or is too long; "
                          f"stopped after {len(seen)}")


def _read_gpt(disk: FlatDisk, name: str) -> PartitionTable:
    problems: list[str] = []
    last_lba = disk.size // SECTOR - 1
    for lba, which in ((1, "primary"), (last_lba, "backup")):
        try:
            table = _read_gpt_at(disk, name, lba)
        except PartitionTableError as exc:
            problems.append(f"{which} GPT header: {exc.what}")
            continue
        table.warnings.extend(f"{name}: {p}; using the backup GPT" for p in problems)
        _check_bounds(disk, table)
        return table
    raise PartitionTableError(name, "protective MBR but no readable GPT (" + "; ".join(problems) + ")",
                              "the partition table is damaged; repair it with gdisk or sgdisk -e")


def _read_gpt_at(disk: FlatDisk, name: str, lba: int) -> PartitionTable:
    raw = disk.read(lba * SECTOR, SECTOR)
    if raw[:8] != b"EFI PART":
        raise PartitionTableError(name, f"no 'EFI PART' signature at sector {lba}")
    header = _GPT_HEADER.parse(raw)
    if not 92 <= header.header_size <= SECTOR:
        raise PartitionTableError(name, f"header size {header.header_size} at sector {lba}")
    check = bytearray(raw[:header.header_size])
    check[16:20] = bytes(4)
    if zlib.crc32(check) != header.header_crc32:
        raise PartitionTableError(name, f"header CRC32 mismatch at sector {lba}")
    if not 128 <= header.entry_size <= 4096 or header.entry_count > MAX_GPT_ENTRIES:
        raise PartitionTableError(name, f"entry size {header.entry_size} / count "
                                  f"{header.entry_count} at sector {lba}")
    entries = disk.read(header.entries_lba * SECTOR, header.entry_count * header.entry_size)
    if len(entries) != header.entry_count * header.entry_size or (
            zlib.crc32(entries) != header.entries_crc32):
        raise PartitionTableError(name, f"partition entry array at sector {header.entries_lba} "
                                  "fails its CRC32")
    table = PartitionTable("gpt", disk_guid=_guid(header.disk_guid))
    for index in range(header.entry_count):
        entry = _GPT_ENTRY.parse(entries[index * header.entry_size:][:128])
        if entry.type_guid == bytes(16):
            continue
        type_guid = _guid(entry.type_guid)
        if entry.last_lba < entry.first_lba:
            table.warnings.append(f"{name}: GPT entry {index + 1} ends before it starts; ignored")
            continue
        table.partitions.append(Partition(
            number=index + 1, start=entry.first_lba * SECTOR,
            length=(entry.last_lba - entry.first_lba + 1) * SECTOR,
            type_name=GPT_TYPE_NAMES.get(type_guid, type_guid), scheme="gpt", type_code=type_guid,
            bootable=bool(entry.attributes & GPT_ATTR_LEGACY_BIOS_BOOTABLE),
            guid=_guid(entry.unique_guid),
            name=entry.name.decode("utf-16-le", errors="replace").split("\x00", 1)[0]))
    return table


def _check_bounds(disk: FlatDisk, table: PartitionTable) -> None:
    for part in table.partitions:
        if part.end > disk.size:
            table.warnings.append(
                f"{disk.name}: partition {part.number} ends at byte {part.end}, past the "
                f"end of the disk ({disk.size} bytes); only its first "
                f"{max(disk.size - part.start, 0)} bytes can be read")
