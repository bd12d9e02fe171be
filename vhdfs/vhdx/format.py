"""VHDX on-disk structures ([MS-VHDX]), declared once with construct.

All integers are little-endian (VHD is big-endian). GUIDs are stored in Microsoft's mixed
layout: `uuid.UUID(bytes_le=raw)` reads them. The headers, the region table and log
entries carry a CRC-32C (Castagnoli) over the whole structure with the checksum field
taken as zero; the header and region table structs below check it when parsing and
write it when building, as the VHD structs do with their one's-complement sums.
"""

from __future__ import annotations

import uuid

import google_crc32c
from construct import (
    Array,
    Bytes,
    Checksum,
    Const,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Pointer,
    RawCopy,
    Struct,
)

KiB = 1024
MiB = 1024 * KiB

SIGNATURE = b"vhdxfile"
FILE_ID_SIZE = 64 * KiB
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
HEADER_SECTION_SIZE = 1 * MiB
MAX_REGION_ENTRIES = 2047
MAX_METADATA_ENTRIES = 2047
METADATA_TABLE_SIZE = 64 * KiB
LOG_SECTOR = 4 * KiB
SECTOR_BITMAP_BLOCK = 1 * MiB
MAX_VIRTUAL_SIZE = 64 * 1024 * 1024 * MiB  # 64 TiB


def guid(text: str) -> bytes:
    """The on-disk bytes of a GUID written as text."""
    return uuid.UUID(text).bytes_le


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def parse_guid_text(text: str) -> bytes | None:
    """'{XXXXXXXX-...}' as in parent_linkage values -> on-disk bytes, or None if malformed."""
    try:
        return uuid.UUID(text.strip().strip("{}")).bytes_le
    except ValueError:
        return None


ZERO_GUID = bytes(16)

# Region table entries
BAT_REGION = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")

# Metadata items
FILE_PARAMETERS = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
KNOWN_METADATA = {
    FILE_PARAMETERS: "file parameters",
    VIRTUAL_DISK_SIZE: "virtual disk size",
    VIRTUAL_DISK_ID: "virtual disk id",
    LOGICAL_SECTOR_SIZE: "logical sector size",
    PHYSICAL_SECTOR_SIZE: "physical sector size",
    PARENT_LOCATOR: "parent locator",
}
# The one parent locator type the spec defines: a VHDX parent.
VHDX_PARENT_LOCATOR_TYPE = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

# BAT entry states (bits 0-2); the file offset in MiB is bits 20-63.
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
PAYLOAD_STATES = {
    PAYLOAD_BLOCK_NOT_PRESENT: "not present",
    PAYLOAD_BLOCK_UNDEFINED: "undefined",
    PAYLOAD_BLOCK_ZERO: "zero",
    PAYLOAD_BLOCK_UNMAPPED: "unmapped",
    PAYLOAD_BLOCK_FULLY_PRESENT: "fully present",
    PAYLOAD_BLOCK_PARTIALLY_PRESENT: "partially present",
}
STATE_MASK = 0x7
OFFSET_MASK = ~0xFFFFF & 0xFFFFFFFFFFFFFFFF


def bat_entry(state: int, file_offset: int = 0) -> int:
    return (file_offset & OFFSET_MASK) | state


def crc32c_of(data: bytes) -> int:
    return google_crc32c.value(data)


def _with_crc32c(signature: bytes, tail: Struct) -> Struct:
    """`signature | u32 CRC-32C | tail`; the CRC covers all of it with its own field as zero."""
    covered = lambda ctx: ctx.head.data + bytes(4) + ctx.tail.data  # noqa: E731
    return Struct(
        "head" / RawCopy(Const(signature)),
        Padding(4),  # the checksum slot, written by the Pointer below once the rest is known
        "tail" / RawCopy(tail),
        "checksum" / Pointer(4, Checksum(Int32ul, crc32c_of, covered)),
    )


FILE_IDENTIFIER = Struct(
    "signature" / Const(SIGNATURE),
    "creator" / Bytes(512),  # UTF-16LE, zero padded
)

HEADER = _with_crc32c(b"head", Struct(
    "sequence_number" / Int64ul,
    "file_write_guid" / Bytes(16),
    "data_write_guid" / Bytes(16),
    "log_guid" / Bytes(16),
    "log_version" / Int16ul,
    "version" / Int16ul,
    "log_length" / Int32ul,
    "log_offset" / Int64ul,
    "reserved" / Bytes(HEADER_SIZE - 80),
))

REGION_ENTRY = Struct(
    "guid" / Bytes(16),
    "file_offset" / Int64ul,
    "length" / Int32ul,
    "required" / Int32ul,  # bit 0
)


def _region_count(ctx) -> int:
    return min(ctx.entry_count, MAX_REGION_ENTRIES)


REGION_TABLE = _with_crc32c(b"regi", Struct(
    "entry_count" / Int32ul,
    "reserved" / Int32ul,
    "entries" / Array(_region_count, REGION_ENTRY),
    "rest" / Bytes(lambda ctx: REGION_TABLE_SIZE - 16 - 32 * _region_count(ctx)),
))

METADATA_TABLE_HEADER = Struct(
    "signature" / Const(b"metadata"),
    "reserved" / Int16ul,
    "entry_count" / Int16ul,
    "reserved2" / Bytes(20),
)

METADATA_ENTRY = Struct(
    "item_id" / Bytes(16),
    "offset" / Int32ul,  # from the start of the metadata region
    "length" / Int32ul,
    "flags" / Int32ul,  # bit 0 IsUser, bit 1 IsVirtualDisk, bit 2 IsRequired
    "reserved" / Int32ul,
)
META_IS_USER = 1
META_IS_VIRTUAL_DISK = 2
META_IS_REQUIRED = 4

FILE_PARAMETERS_ITEM = Struct(
    "block_size" / Int32ul,
    "flags" / Int32ul,  # bit 0 LeaveBlockAllocated, bit 1 HasParent
)
LEAVE_BLOCKS_ALLOCATED = 1
HAS_PARENT = 2

PARENT_LOCATOR_HEADER = Struct(
    "locator_type" / Bytes(16),
    "reserved" / Int16ul,
    "key_value_count" / Int16ul,
)
PARENT_LOCATOR_ENTRY = Struct(
    "key_offset" / Int32ul,  # from the start of the parent locator item
    "value_offset" / Int32ul,
    "key_length" / Int16ul,
    "value_length" / Int16ul,
)

# The fields of a log entry after its signature and checksum, declared once for the two
# structs below: the 64-byte header a reader peeks at, and the whole entry.
_LOG_ENTRY_FIELDS = (
    "entry_length" / Int32ul,  # the whole entry: header and descriptor sectors, data sectors
    "tail" / Int32ul,  # log offset of the first entry of the sequence ending with this one
    "sequence_number" / Int64ul,
    "descriptor_count" / Int32ul,
    "reserved" / Int32ul,
    "log_guid" / Bytes(16),
    "flushed_file_offset" / Int64ul,  # the file was at least this long, durably, when written
    "last_file_offset" / Int64ul,  # every structure the file holds ends before this
)
LOG_ENTRY_HEADER = Struct(
    "signature" / Const(b"loge"),
    "checksum" / Int32ul,  # checked by LOG_ENTRY, which covers the whole entry
    *_LOG_ENTRY_FIELDS,
)
LOG_ENTRY_HEADER_SIZE = 64

# A zero descriptor ("zero") and a data descriptor ("desc") share one 32-byte layout.
LOG_DESCRIPTOR = Struct(
    "signature" / Bytes(4),
    "trailing_bytes" / Bytes(4),  # "zero": reserved
    "leading_bytes" / Bytes(8),  # "zero": zero length (u64)
    "file_offset" / Int64ul,
    "sequence_number" / Int64ul,
)
LOG_DESCRIPTOR_SIZE = 32
DATA_DESCRIPTOR = b"desc"
ZERO_DESCRIPTOR = b"zero"

LOG_DATA_SECTOR = Struct(
    "signature" / Const(b"data"),
    "sequence_high" / Int32ul,
    "data" / Bytes(4084),  # the 4 KiB written minus 8 leading and 4 trailing bytes
    "sequence_low" / Int32ul,
)


def _descriptor_padding(ctx) -> int:
    used = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * ctx.descriptor_count
    return descriptor_sectors(ctx.descriptor_count) * LOG_SECTOR - used


def _data_sector_count(ctx) -> int:
    return sum(1 for desc in ctx.descriptors if desc.signature == DATA_DESCRIPTOR)


def _entry_rest(ctx) -> int:
    """Bytes the entry length claims beyond its descriptors and data (none when well formed)."""
    used = descriptor_sectors(ctx.descriptor_count) * LOG_SECTOR + len(ctx.data_sectors) * LOG_SECTOR
    return max(0, ctx.entry_length - used)


# One whole log entry, its CRC-32C over all of it (entry_length bytes, the field as zero).
LOG_ENTRY = _with_crc32c(b"loge", Struct(
    *_LOG_ENTRY_FIELDS,
    "descriptors" / Array(lambda ctx: ctx.descriptor_count, LOG_DESCRIPTOR),
    Padding(_descriptor_padding),
    "data_sectors" / Array(_data_sector_count, LOG_DATA_SECTOR),
    "rest" / Bytes(_entry_rest),
))


def build_log_entry(fields: dict) -> bytes:
    """The bytes of a log entry (fields as LOG_ENTRY's, descriptors and data sectors included);
    entry_length is computed here and the checksum by the struct."""
    count = len(fields["descriptors"])
    data = sum(1 for desc in fields["descriptors"] if desc["signature"] == DATA_DESCRIPTOR)
    length = (descriptor_sectors(count) + data) * LOG_SECTOR
    body = dict(fields, entry_length=length, descriptor_count=count, rest=b"")
    return LOG_ENTRY.build(dict(head=dict(value=None), tail=dict(value=body), checksum=None))


def build_header(fields: dict) -> bytes:
    """The 4 KiB of a header (fields as HEADER's tail, `reserved` optional), checksum included."""
    body = dict(fields)
    body.setdefault("reserved", bytes(HEADER_SIZE - 80))
    return HEADER.build(dict(head=dict(value=None), tail=dict(value=body), checksum=None))


def build_region_table(entries: list[tuple[bytes, int, int, bool]]) -> bytes:
    """64 KiB region table of (guid, file offset, length, required) entries, checksum included."""
    rows = [dict(guid=g, file_offset=o, length=n, required=int(r)) for g, o, n, r in entries]
    body = dict(entry_count=len(rows), reserved=0, entries=rows,
                rest=bytes(REGION_TABLE_SIZE - 16 - 32 * len(rows)))
    return REGION_TABLE.build(dict(head=dict(value=None), tail=dict(value=body), checksum=None))


def descriptor_sectors(count: int) -> int:
    """4 KiB sectors holding an entry's header (64 bytes) and `count` 32-byte descriptors."""
    return -(-(LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * count) // LOG_SECTOR)


def chunk_ratio(block_size: int, logical_sector_size: int) -> int:
    """Payload blocks described by one 1 MiB sector bitmap block."""
    return (1 << 23) * logical_sector_size // block_size


def bat_entry_count(virtual_size: int, block_size: int, logical_sector_size: int,
                    differencing: bool) -> int:
    ratio = chunk_ratio(block_size, logical_sector_size)
    payload = -(-virtual_size // block_size)
    if differencing:
        return -(-payload // ratio) * (ratio + 1)
    return payload + (payload - 1) // ratio


def payload_index(block: int, ratio: int) -> int:
    """BAT index of payload block `block`: sector bitmap entries follow every `ratio` of them."""
    return block + block // ratio


def bitmap_index(block: int, ratio: int) -> int:
    """BAT index of the sector bitmap entry of the chunk holding payload block `block`."""
    return (block // ratio) * (ratio + 1) + ratio


# vhdfs's own user metadata item (not required: other readers skip it): the mark of an
# unfinished `vhdfs commit` into this file (vhdfs.maintain.journals_vhdx), for when the file
# travels without the journal beside it.
COMMIT_MARK_ITEM = guid("7A1F3C52-5B8E-4D0B-9C1A-76686466636D")
COMMIT_MARK = Struct(
    "magic" / Const(b"vhdfs-commit\0\0\0\x01"),  # name and version
    "child_id" / Bytes(16),  # the child's DataWriteGuid
    "parent_before" / Bytes(16),  # the parent's DataWriteGuid when the commit began
    "parent_after" / Bytes(16),  # the one the commit gives it
)
