"""A small VHDX writer for test fixtures: dynamic and differencing files, any block state.

qemu-img writes dynamic and fixed VHDX but no differencing ones, and no tool here writes
PARTIALLY_PRESENT blocks, ZERO/UNMAPPED/UNDEFINED states, 4 KiB logical sectors or log
entries on demand. This writer lays out:

  0        file identifier            1 MiB    log (1 MiB)
  64 KiB   header 1                   2 MiB    metadata region (1 MiB)
  128 KiB  header 2                   3 MiB    BAT region (whole MiB)
  192 KiB  region table 1             then     payload blocks and sector bitmap blocks
  256 KiB  region table 2

Headers, region tables, log entries and the metadata region are built by the production
code (vhdfs.vhdx.format, vhdfs.vhdx.build), so the CRC-32C fields are computed by the same
structs the reader checks; what this writer adds is any block layout and state, and log
entries anywhere in the log. Damage is applied afterwards by tests.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.vhdx import build
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.bitmap import set_lsb_bits

MiB = fmt.MiB
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
METADATA_OFFSET = 2 * MiB
METADATA_LENGTH = 1 * MiB
BAT_OFFSET = 3 * MiB


@dataclass
class Block:
    state: int
    data: bytes = b""  # block_size bytes for present blocks (zeros when empty)
    present: set[int] = field(default_factory=set)  # sectors in the block, PARTIALLY_PRESENT


@dataclass
class LogWrite:
    file_offset: int  # 4 KiB aligned
    data: bytes | None = None  # 4096 bytes, or None for a zero descriptor
    zero_length: int = 0


@dataclass
class Vhdx:
    size: int
    block_size: int = 1 * MiB
    logical_sector_size: int = 512
    physical_sector_size: int = 4096
    blocks: dict[int, Block] = field(default_factory=dict)
    parent_locator: dict[str, str] | None = None  # set: a differencing file
    data_write_guid: bytes = field(default_factory=lambda: uuid.uuid4().bytes_le)
    header_guids: tuple[bytes, bytes] | None = None  # per-header data write guids (tests)
    sequence_numbers: tuple[int, int] = (1, 2)
    leave_allocated: bool = False
    log_entries: list[list[LogWrite]] = field(default_factory=list)
    log_first_sequence: int = 10
    log_start: int = 0  # position of the first entry inside the log
    creator: str = "vhdfs test writer"

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // self.logical_sector_size

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` (whole logical sectors) in this file, partially present blocks."""
        lss = self.logical_sector_size
        assert offset % lss == 0 and len(data) % lss == 0
        done = 0
        while done < len(data):
            block, inner = divmod(offset + done, self.block_size)
            count = min(self.block_size - inner, len(data) - done)
            current = self.blocks.get(block)
            if current is None or current.state < fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
                # Only a not-present block of a differencing file leaves sectors to the
                # parent; zero, unmapped and undefined blocks read as zeros here already.
                partial = self.parent_locator is not None and (
                    current is None or current.state == fmt.PAYLOAD_BLOCK_NOT_PRESENT)
                state = (fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT if partial
                         else fmt.PAYLOAD_BLOCK_FULLY_PRESENT)
                current = self.blocks[block] = Block(state, bytes(self.block_size))
            buf = bytearray(current.data)
            buf[inner:inner + count] = data[done:done + count]
            current.data = bytes(buf)
            current.present.update(range(inner // lss, (inner + count) // lss))
            done += count


def parent_locator_for(parent_data_write_guid: bytes, *, upper: bool = False,
                       **paths: str) -> dict[str, str]:
    """Locator entries naming a parent by its DataWriteGuid, as '{guid}' text.

    Lower case by default: libvhdi 20210425 parses only lower-case GUID text here.
    """
    text = fmt.guid_text(parent_data_write_guid)
    values = {"parent_linkage": "{" + (text if upper else text.lower()) + "}"}
    values.update(paths)
    return values


def _header(seq: int, data_write_guid: bytes, log_guid: bytes) -> bytes:
    return fmt.build_header(dict(
        sequence_number=seq, file_write_guid=uuid.uuid4().bytes_le,
        data_write_guid=data_write_guid, log_guid=log_guid, log_version=0, version=1,
        log_length=LOG_LENGTH, log_offset=LOG_OFFSET))


def region_table(entries: list[tuple[bytes, int, int]]) -> bytes:
    return fmt.build_region_table([(g, o, n, True) for g, o, n in entries])


def _metadata(image: Vhdx) -> bytes:
    """The metadata region as vhdfs.vhdx.build lays it out for the same disk."""
    return build.metadata_region(build.NewVhdx(
        size=image.size, block_size=image.block_size,
        logical_sector_size=image.logical_sector_size,
        physical_sector_size=image.physical_sector_size, fixed=image.leave_allocated,
        parent_locator=image.parent_locator)).ljust(METADATA_LENGTH, b"\0")


def _log(image: Vhdx, log_guid: bytes, file_size: int) -> bytes:
    """The log region holding `image.log_entries` as consecutive entries from log_start."""
    log = bytearray(LOG_LENGTH)
    position = image.log_start
    tail = position
    for number, writes in enumerate(image.log_entries):
        seq = image.log_first_sequence + number
        descriptors, sectors = [], []
        for w in writes:
            if w.data is None:
                descriptors.append(dict(signature=fmt.ZERO_DESCRIPTOR, trailing_bytes=bytes(4),
                                        leading_bytes=w.zero_length.to_bytes(8, "little"),
                                        file_offset=w.file_offset, sequence_number=seq))
            else:
                assert len(w.data) == fmt.LOG_SECTOR
                descriptors.append(dict(signature=fmt.DATA_DESCRIPTOR, trailing_bytes=w.data[-4:],
                                        leading_bytes=w.data[:8], file_offset=w.file_offset,
                                        sequence_number=seq))
                sectors.append(dict(sequence_high=seq >> 32, data=w.data[8:-4],
                                    sequence_low=seq & 0xFFFFFFFF))
        entry = fmt.build_log_entry(dict(
            tail=tail, sequence_number=seq, reserved=0, log_guid=log_guid,
            flushed_file_offset=file_size, last_file_offset=file_size,
            descriptors=descriptors, data_sectors=sectors))
        length = len(entry)
        for i in range(0, length, fmt.LOG_SECTOR):  # circular: an entry may wrap
            at = (position + i) % LOG_LENGTH
            log[at:at + fmt.LOG_SECTOR] = entry[i:i + fmt.LOG_SECTOR]
        position = (position + length) % LOG_LENGTH
    return bytes(log)


def write_vhdx(path: str | os.PathLike[str], image: Vhdx) -> Path:
    path = Path(path)
    ratio = fmt.chunk_ratio(image.block_size, image.logical_sector_size)
    differencing = image.parent_locator is not None
    entries = fmt.bat_entry_count(image.size, image.block_size, image.logical_sector_size,
                                  differencing)
    bat_length = -(-entries * 8 // MiB) * MiB
    bat = [0] * entries
    next_free = BAT_OFFSET + bat_length
    placed: list[tuple[int, bytes]] = []
    bitmaps: dict[int, bytearray] = {}
    for block, spec in sorted(image.blocks.items()):
        offset = 0
        if spec.state >= fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
            offset = next_free
            next_free += image.block_size
            placed.append((offset, spec.data.ljust(image.block_size, b"\0")))
        bat[fmt.payload_index(block, ratio)] = fmt.bat_entry(spec.state, offset)
        if spec.state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
            chunk = block // ratio
            bitmap = bitmaps.setdefault(chunk, bytearray(fmt.SECTOR_BITMAP_BLOCK))
            base = (block % ratio) * image.sectors_per_block
            for sector in spec.present:
                set_lsb_bits(bitmap, base + sector, 1)
    for chunk, bitmap in sorted(bitmaps.items()):
        bat[fmt.bitmap_index(chunk * ratio, ratio)] = fmt.bat_entry(fmt.SB_BLOCK_PRESENT, next_free)
        placed.append((next_free, bytes(bitmap)))
        next_free += fmt.SECTOR_BITMAP_BLOCK
    log_guid = uuid.uuid4().bytes_le if image.log_entries else fmt.ZERO_GUID
    guids = image.header_guids or (image.data_write_guid, image.data_write_guid)
    regions = region_table([(fmt.BAT_REGION, BAT_OFFSET, bat_length),
                            (fmt.METADATA_REGION, METADATA_OFFSET, METADATA_LENGTH)])
    ident = fmt.FILE_IDENTIFIER.build(dict(creator=image.creator.encode("utf-16-le").ljust(512, b"\0")))
    bat_raw = b"".join(e.to_bytes(8, "little") for e in bat)
    with open(path, "wb") as out:
        out.truncate(next_free)
        for offset, data in [
            (0, ident),
            (fmt.HEADER_OFFSETS[0], _header(image.sequence_numbers[0], guids[0], log_guid)),
            (fmt.HEADER_OFFSETS[1], _header(image.sequence_numbers[1], guids[1], log_guid)),
            (fmt.REGION_TABLE_OFFSETS[0], regions),
            (fmt.REGION_TABLE_OFFSETS[1], regions),
            (METADATA_OFFSET, _metadata(image)),
            (BAT_OFFSET, bat_raw),
            *placed,
        ]:
            out.seek(offset)
            out.write(data)
        if image.log_entries:
            out.seek(LOG_OFFSET)
            out.write(_log(image, log_guid, next_free))
    return path


def patch(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def bat_bytes_of(image: Vhdx, block: int, state: int, offset: int) -> tuple[int, bytes]:
    """(file offset, 8 bytes) of a BAT entry of `image` as the writer lays it out."""
    ratio = fmt.chunk_ratio(image.block_size, image.logical_sector_size)
    entry = fmt.bat_entry(state, offset).to_bytes(8, "little")
    return BAT_OFFSET + 8 * fmt.payload_index(block, ratio), entry
