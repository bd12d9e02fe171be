"""The bytes of a new, empty VHDX file: fixed, dynamic or differencing.

Layout (qemu-img lays its files out the same way; Hyper-V reads any layout the region
table describes):
  0        file identifier (creator)
  64 KiB   header 1, 128 KiB header 2: both valid, the second current; log GUID zero
  192 KiB  region table 1, 256 KiB region table 2 (the same)
  1 MiB    log (1 MiB, empty)
  2 MiB    metadata region (1 MiB): the table, then the items
  3 MiB    BAT region (whole MiB)
  then     payload blocks: every block of a fixed disk, in order (a sparse file: the
           blocks read as zeros until written); none for dynamic and differencing disks,
           whose blocks are appended on first write.
"""

from __future__ import annotations

import array
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs import __version__
from vhdfs.errors import UsageError
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import format as fmt

MiB = fmt.MiB
DEFAULT_BLOCK_SIZE = 32 * MiB  # Hyper-V's choice for dynamic disks
DEFAULT_DIFFERENCING_BLOCK_SIZE = 2 * MiB  # Hyper-V's choice for checkpoints (.avhdx)
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB
# The BAT is read whole into memory: a table beyond this (64 TiB in 16 MiB blocks) is refused
# at creation with the block size that fits.
MAX_BAT_ENTRIES = 1 << 22
# Metadata item flags, as [MS-VHDX] 2.6.2 gives them for each known item.
_REQUIRED = fmt.META_IS_REQUIRED
_DISK_REQUIRED = fmt.META_IS_VIRTUAL_DISK | fmt.META_IS_REQUIRED


def new_guid() -> bytes:
    return uuid.uuid4().bytes_le


@dataclass(frozen=True)
class NewVhdx:
    """What a new file is."""

    size: int
    block_size: int = DEFAULT_BLOCK_SIZE
    logical_sector_size: int = 512
    physical_sector_size: int = 4096
    fixed: bool = False
    parent_locator: dict[str, str] | None = None  # set: a differencing file
    virtual_disk_id: bytes = field(default_factory=new_guid)
    creator: str = f"vhdfs {__version__}"

    @property
    def differencing(self) -> bool:
        return self.parent_locator is not None

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size)


def check_new(spec: NewVhdx) -> None:
    """UsageError (with the fix) for a size, block size or sector size VHDX cannot hold."""
    lss, size, bs = spec.logical_sector_size, spec.size, spec.block_size
    if lss not in (512, 4096):
        raise UsageError(f"logical sector size {lss}: VHDX has 512 or 4096")
    if spec.physical_sector_size not in (512, 4096):
        raise UsageError(f"physical sector size {spec.physical_sector_size}: VHDX has 512 or 4096")
    if size <= 0:
        raise UsageError(f"disk size must be positive, got {size}")
    if size % lss:
        raise UsageError(f"disk size {size} is not a multiple of the {lss}-byte sector; use "
                         f"{-(-size // lss) * lss}")
    if size > fmt.MAX_VIRTUAL_SIZE:
        raise UsageError(f"disk size {size} exceeds the VHDX limit of 64 TiB")
    if not (MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE) or bs & (bs - 1):
        raise UsageError(f"block size {bs} must be a power of two from 1M to 256M "
                         "(32M is Hyper-V's choice for dynamic disks, 2M for checkpoints)")
    entries = fmt.bat_entry_count(size, bs, lss, spec.differencing)
    if entries > MAX_BAT_ENTRIES:
        smallest = bs
        while fmt.bat_entry_count(size, smallest, lss, spec.differencing) > MAX_BAT_ENTRIES:
            smallest *= 2
        raise UsageError(f"a disk of {size} bytes in {bs}-byte blocks needs {entries} BAT "
                         f"entries, more than the {MAX_BAT_ENTRIES} vhdfs reads; use "
                         f"--block-size {smallest // MiB}M or larger")


def parent_locator_values(parent_data_write_guid: bytes, child_folder: Path,
                          parent: Path) -> dict[str, str]:
    """The locator of a child in `child_folder` over `parent`.

    parent_linkage is the parent's DataWriteGuid as Hyper-V writes it ('{guid}', lower
    case, which libvhdi also parses). relative_path is Windows style (`.\\base.vhdx`), what
    Hyper-V resolves when the files travel together. Linux has neither volume GUID paths
    nor drive letters: volume_path holds the parent's absolute path as it is here (vhdfs
    tries such a path as written), absolute_win32_path the same path with backslashes
    (libvhdi, which never reads relative_path, takes its last component and looks next to
    the child; so does vhdfs when the path as written is not there).
    """
    parent_abs = parent.resolve()
    relative = os.path.relpath(parent_abs, child_folder.resolve()).replace("/", "\\")
    if not relative.startswith(".."):
        relative = ".\\" + relative
    return {
        "parent_linkage": "{" + fmt.guid_text(parent_data_write_guid).lower() + "}",
        "relative_path": relative,
        "volume_path": str(parent_abs),
        "absolute_win32_path": str(parent_abs).replace("/", "\\"),
    }


def parent_locator_bytes(values: dict[str, str]) -> bytes:
    """The parent locator item: header, key/value entries, then the UTF-16LE strings."""
    head = fmt.PARENT_LOCATOR_HEADER.build(dict(
        locator_type=fmt.VHDX_PARENT_LOCATOR_TYPE, reserved=0, key_value_count=len(values)))
    entries, strings = b"", b""
    base = len(head) + fmt.PARENT_LOCATOR_ENTRY.sizeof() * len(values)
    for key, value in values.items():
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        if not k or not v or len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise UsageError(f"parent locator entry {key!r}: keys and values must be 1 to "
                             "32767 characters")
        entries += fmt.PARENT_LOCATOR_ENTRY.build(dict(
            key_offset=base + len(strings), value_offset=base + len(strings) + len(k),
            key_length=len(k), value_length=len(v)))
        strings += k + v
    return head + entries + strings


def metadata_region(spec: NewVhdx) -> bytes:
    """The metadata region: the table (64 KiB) and the items after it, 8-byte aligned."""
    flags = (fmt.LEAVE_BLOCKS_ALLOCATED if spec.fixed else 0) | (
        fmt.HAS_PARENT if spec.differencing else 0)
    items: list[tuple[bytes, bytes, int]] = [
        (fmt.FILE_PARAMETERS, fmt.FILE_PARAMETERS_ITEM.build(dict(
            block_size=spec.block_size, flags=flags)), _REQUIRED),
        (fmt.VIRTUAL_DISK_SIZE, spec.size.to_bytes(8, "little"), _DISK_REQUIRED),
        (fmt.VIRTUAL_DISK_ID, spec.virtual_disk_id, _DISK_REQUIRED),
        (fmt.LOGICAL_SECTOR_SIZE, spec.logical_sector_size.to_bytes(4, "little"), _DISK_REQUIRED),
        (fmt.PHYSICAL_SECTOR_SIZE, spec.physical_sector_size.to_bytes(4, "little"),
         _DISK_REQUIRED),
    ]
    if spec.parent_locator is not None:
        items.append((fmt.PARENT_LOCATOR, parent_locator_bytes(spec.parent_locator), _REQUIRED))
    table = bytearray(fmt.METADATA_TABLE_SIZE)
    table[:32] = fmt.METADATA_TABLE_HEADER.build(dict(reserved=0, entry_count=len(items),
                                                      reserved2=bytes(20)))
    area = bytearray()
    for index, (item_id, value, item_flags) in enumerate(items):
        table[32 + 32 * index:64 + 32 * index] = fmt.METADATA_ENTRY.build(dict(
            item_id=item_id, offset=fmt.METADATA_TABLE_SIZE + len(area), length=len(value),
            flags=item_flags, reserved=0))
        area += value + bytes(-len(value) % 8)
    if len(table) + len(area) > METADATA_LENGTH:
        raise UsageError("the parent locator is too long for the metadata region; use a "
                         "shorter parent path")
    return bytes(table + area)


def bat_table(spec: NewVhdx, payload_start: int) -> bytes:
    """The BAT: every payload block present in order for a fixed disk, else all zeros."""
    entries = fmt.bat_entry_count(spec.size, spec.block_size, spec.logical_sector_size,
                                  spec.differencing)
    bat = array.array("Q", bytes(8 * entries))
    if spec.fixed:
        ratio = fmt.chunk_ratio(spec.block_size, spec.logical_sector_size)
        for block in range(spec.block_count):
            bat[fmt.payload_index(block, ratio)] = fmt.bat_entry(
                fmt.PAYLOAD_BLOCK_FULLY_PRESENT, payload_start + block * spec.block_size)
    if sys.byteorder == "big":
        bat.byteswap()
    return bat.tobytes()


def write_new(target: Source, spec: NewVhdx) -> bytes:
    """Write the new file `spec` describes into the empty writable `target` (not synced: the
    caller syncs and renames it into place); return its DataWriteGuid."""
    check_new(spec)
    if spec.fixed and spec.differencing:
        raise UsageError("a differencing disk cannot be fixed")
    bat = bat_table(spec, 0)
    bat_length = -(-len(bat) // MiB) * MiB
    payload_start = BAT_OFFSET + bat_length
    if spec.fixed:
        bat = bat_table(spec, payload_start)
    file_size = payload_start + (spec.block_count * spec.block_size if spec.fixed else 0)
    data_write_guid = new_guid()
    header = dict(file_write_guid=new_guid(), data_write_guid=data_write_guid,
                  log_guid=fmt.ZERO_GUID, log_version=0, version=1, log_length=LOG_LENGTH,
                  log_offset=LOG_OFFSET)
    regions = fmt.build_region_table([(fmt.BAT_REGION, BAT_OFFSET, bat_length, True),
                                      (fmt.METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH, True)])
    creator = spec.creator.encode("utf-16-le")[:510].ljust(512, b"\0")
    target.truncate(file_size)
    for offset, data in [
        (0, fmt.FILE_IDENTIFIER.build(dict(creator=creator))),
        (fmt.HEADER_OFFSETS[0], fmt.build_header(dict(header, sequence_number=1))),
        (fmt.HEADER_OFFSETS[1], fmt.build_header(dict(header, sequence_number=2))),
        (fmt.REGION_TABLE_OFFSETS[0], regions),
        (fmt.REGION_TABLE_OFFSETS[1], regions),
        (METADATA_OFFSET, metadata_region(spec)),
        (BAT_OFFSET, bat),
    ]:
        target.write_at(offset, data)
    return data_write_guid


def write_new_file(path: Path, spec: NewVhdx) -> bytes:
    """`write_new` into the empty local file `path`."""
    with LocalFile(path, writable=True) as target:
        return write_new(target, spec)
