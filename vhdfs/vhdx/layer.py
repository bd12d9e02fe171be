"""One VHDX file (.vhdx, or an .avhdx checkpoint) over one source: reading, and writing.

Offers what the chain, convert and the views ask of `vhdfs.vhd.layer.Layer`: `map` turns a
range of the virtual disk into HERE / BELOW / ZERO runs, `read_data` reads stored bytes,
and, opened writable, `write` / `flush` / `close` (data in place or in new blocks, the BAT
and sector bitmap changes through the log: vhdfs.vhdx.journal; docs/vhdx.md, "Writing").

Opening follows [MS-VHDX]: the file identifier, the current header of the two (highest
sequence number among those whose CRC-32C holds), the log (replayed in memory when the
header's log GUID is set, see vhdfs.vhdx.log), the region table (BAT and metadata
regions), the metadata items and the BAT. Blocks whose BAT entry is damaged are listed in
`bad_blocks`; reading them fails with a clear error, everything else still reads.

Block states, as read here:
  not present        zeros, or the parent's data in a differencing file
  undefined, zero,   zeros, also in a differencing file: the block is described by this
  unmapped           file, so the parent is not consulted (libvhdi reads the parent instead)
  fully present      this file's block
  partially present  differencing files: the sector bitmap (LSB first) says per sector
"""

from __future__ import annotations

import array
import errno
import logging
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from construct import ChecksumError as ConstructChecksumError
from construct import ConstructError

from vhdfs.errors import FormatError, ImageIOError, RefusedError, VhdfsError
from vhdfs.image import DiskType, LocatorEntry, Run, RunKind
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.bitmap import lsb_runs, set_lsb_bits
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.journal import Journal
from vhdfs.vhdx.log import LogReplay, replay_log

log = logging.getLogger("vhdfs")

MiB = fmt.MiB
BITMAP_CACHE_BLOCKS = 1024
# Changed metadata sectors after which a write flushes on its own: bounds memory and what a
# crash can lose, and keeps a commit within one entry of a 1 MiB log (254 sectors). Each
# flush costs two fsyncs: fewer, larger commits are what keep random writes fast.
AUTO_FLUSH_SECTORS = 128
BAT_ENTRIES_PER_SECTOR = fmt.LOG_SECTOR // 8
# Parent locator keys that name a file, in the order they are tried.
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


def is_vhdx(source: Source) -> bool:
    """True when the file starts with the VHDX file identifier."""
    return source.size() >= fmt.FILE_ID_SIZE and source.read_at(0, 8) == fmt.SIGNATURE


def refuse_vhdx(source: Source, action: str) -> None:
    """Raise RefusedError (and close `source`) when it is a VHDX that `action` would write."""
    if is_vhdx(source):
        source.close()
        raise RefusedError(f"{source.name}: {action} is not supported for VHDX images yet; "
                           f"convert the chain first: vhdfs convert {source.name} out.vhd "
                           "--to dynamic")


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int


class VhdxLayer:
    """One VHDX file: fixed, dynamic or differencing; writable when opened so."""

    image_format = "VHDX"
    header = None  # no VHD dynamic header
    bitmap_size = 0
    format_id = staticmethod(fmt.guid_text)  # ids shown as Windows shows them

    def __init__(self, source: Source, *, size_rule: str = "auto", writable: bool = False) -> None:
        self.source = source
        self.name = source.name
        self.writable = writable
        self.warnings: list[str] = []
        self.bad_blocks: dict[int, str] = {}
        self.replay: LogReplay | None = None
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._bitmaps: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty_bitmaps: set[int] = set()  # payload blocks whose bitmap bits changed
        self._dirty_bitmap_sectors: set[int] = set()  # the 4 KiB sectors holding those bits
        self._dirty_bat: set[int] = set()  # 4 KiB sectors of the BAT region that changed
        self._committing: set[int] = set()  # bitmaps being flushed, not yet in the file
        self.bad_bitmaps: dict[int, str] = {}  # chunk -> why its sector bitmap entry is bad
        self._pending_sync = False
        self.parent_ids: tuple[bytes, ...] = ()

        self.file_size = source.size()
        if not is_vhdx(source):
            raise FormatError(self.name, "no 'vhdxfile' signature at offset 0",
                              "it is not a VHDX image")
        ident = fmt.FILE_IDENTIFIER.parse(source.read_at(0, 520))
        self.creator = ident.creator.decode("utf-16-le", "replace").split("\0", 1)[0]
        self.headers = Headers.read(source, self._warn)
        hdr = self.current_header
        if hdr.log_guid != fmt.ZERO_GUID:
            self.replay = replay_log(source.read_at, self.name, self.file_size, hdr.log_guid,
                                     hdr.log_offset, hdr.log_length)
            if self.replay is not None and not writable:
                self._warn(f"{self.name}: the log holds {len(self.replay.entries)} entr"
                           f"{'y' if len(self.replay.entries) == 1 else 'ies'} not yet replayed "
                           f"({self.replay.write_count} sector write(s), left by a crash or an "
                           "unclean close); replayed in memory for reading, the file is unchanged")
        self.data_size = self.replay.file_size if self.replay else self.file_size
        self.regions = self._read_region_table()
        self._read_metadata()
        self._read_bat()
        self.journal: Journal | None = None
        if writable:
            self._open_for_writing()

    # ---------------------------------------------------------------- opening
    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)

    def _read(self, offset: int, length: int) -> bytes:
        """File bytes as they are once the log is replayed."""
        if self.replay is None:
            return self.source.read_at(offset, length)
        stored = max(0, min(length, self.file_size - offset))
        data = bytearray(self.source.read_at(offset, stored) if stored else b"")
        data += bytes(length - stored)  # the log may have grown the file
        self.replay.apply(offset, data)
        return bytes(data)

    def _read_region_table(self) -> dict[bytes, Region]:
        table = None
        problems: list[str] = []
        for number, offset in enumerate(fmt.REGION_TABLE_OFFSETS, start=1):
            try:
                table = fmt.REGION_TABLE.parse(self._read(offset, fmt.REGION_TABLE_SIZE)).tail.value
                break
            except ConstructChecksumError:
                problems.append(f"region table {number} at offset {offset} fails its CRC-32C check")
            except ConstructError:
                problems.append(f"region table {number} at offset {offset} has no 'regi' signature")
        if table is None:
            raise FormatError(self.name, "both region tables are damaged (" + "; ".join(problems)
                              + ")", "the file cannot be read; restore it from a copy")
        if problems:
            self._warn(f"{self.name}: {problems[0]}; using region table 2")
        if table.entry_count > fmt.MAX_REGION_ENTRIES:
            raise FormatError(self.name, f"region table: {table.entry_count} entries (at most "
                              f"{fmt.MAX_REGION_ENTRIES})", "the region table is damaged")
        names = {fmt.BAT_REGION: "BAT region", fmt.METADATA_REGION: "metadata region"}
        regions: dict[bytes, Region] = {}
        for index, entry in enumerate(table.entries):
            name = names.get(entry.guid)
            where = f"region table entry {index} ({name or fmt.guid_text(entry.guid)})"
            if name is None:
                if entry.required & 1:
                    raise FormatError(self.name, f"{where}: a required region vhdfs does not "
                                      "know", "the image needs a newer VHDX reader")
                continue
            if entry.guid in regions:
                raise FormatError(self.name, f"{where}: listed twice", "the region table is damaged")
            start, end = entry.file_offset, entry.file_offset + entry.length
            if start % MiB or entry.length % MiB or entry.length == 0 or start < fmt.HEADER_SECTION_SIZE:
                raise FormatError(self.name, f"{where}: offset {start}, length {entry.length}; both "
                                  "must be whole MiB, past the first MiB", "the region table is damaged")
            if end > self.data_size:
                raise FormatError(self.name, f"{where}: ends at {end}, past the end of the file "
                                  f"({self.data_size} bytes)", "the file is truncated")
            regions[entry.guid] = Region(name, start, end)
        for guid, name in names.items():
            if guid not in regions:
                raise FormatError(self.name, f"region table: no {name}", "the region table is damaged")
        spans = list(regions.values())
        hdr = self.current_header
        if hdr.log_length:
            spans.append(Region("log", hdr.log_offset, hdr.log_offset + hdr.log_length))
        spans.sort(key=lambda r: r.start)
        for previous, region in zip(spans, spans[1:], strict=False):
            if region.start < previous.end:
                raise FormatError(
                    self.name, f"region table: the {region.name} [{region.start}, {region.end}) "
                    f"overlaps the {previous.name} [{previous.start}, {previous.end})",
                    "the region table is damaged")
        self.spans = spans
        return regions

    def _read_metadata(self) -> None:
        region = self.regions[fmt.METADATA_REGION]
        raw = self._read(region.start, region.end - region.start)
        where = f"metadata region at offset {region.start}"
        try:
            head = fmt.METADATA_TABLE_HEADER.parse(raw)
        except ConstructError:
            raise FormatError(self.name, f"{where}: no 'metadata' signature",
                              "the metadata region is damaged") from None
        if head.entry_count > fmt.MAX_METADATA_ENTRIES:
            raise FormatError(self.name, f"{where}: {head.entry_count} entries (at most "
                              f"{fmt.MAX_METADATA_ENTRIES})", "the metadata region is damaged")
        items: dict[bytes, bytes] = {}
        for index in range(head.entry_count):
            entry = fmt.METADATA_ENTRY.parse(raw[32 + 32 * index:64 + 32 * index])
            name = fmt.KNOWN_METADATA.get(entry.item_id)
            what = f"{where}, entry {index} ({name or fmt.guid_text(entry.item_id)})"
            if name is None:
                if entry.flags & fmt.META_IS_REQUIRED:
                    raise FormatError(self.name, f"{what}: a required metadata item vhdfs does "
                                      "not know", "the image needs a newer VHDX reader")
                continue
            if entry.item_id in items:
                raise FormatError(self.name, f"{what}: listed twice", "the metadata is damaged")
            if entry.length and (entry.offset < fmt.METADATA_TABLE_SIZE
                                 or entry.offset + entry.length > len(raw)):
                raise FormatError(self.name, f"{what}: {entry.length} bytes at offset "
                                  f"{entry.offset} lie outside the region's item area",
                                  "the metadata is damaged")
            items[entry.item_id] = raw[entry.offset:entry.offset + entry.length]

        def item(guid: bytes, size: int) -> bytes:
            value = items.get(guid)
            if value is None or len(value) < size:
                raise FormatError(self.name, f"{where}: the {fmt.KNOWN_METADATA[guid]} item is "
                                  "missing or short", "the metadata is damaged")
            return value

        params = fmt.FILE_PARAMETERS_ITEM.parse(item(fmt.FILE_PARAMETERS, 8))
        self.block_size = params.block_size
        self.leave_blocks_allocated = bool(params.flags & fmt.LEAVE_BLOCKS_ALLOCATED)
        self.has_parent = bool(params.flags & fmt.HAS_PARENT)
        self.size = int.from_bytes(item(fmt.VIRTUAL_DISK_SIZE, 8)[:8], "little")
        self.virtual_disk_id = item(fmt.VIRTUAL_DISK_ID, 16)[:16]
        self.logical_sector_size = int.from_bytes(item(fmt.LOGICAL_SECTOR_SIZE, 4)[:4], "little")
        self.physical_sector_size = int.from_bytes(item(fmt.PHYSICAL_SECTOR_SIZE, 4)[:4], "little")
        bs = self.block_size
        if bs < MiB or bs > 256 * MiB or bs & (bs - 1):
            raise FormatError(self.name, f"{where}: block size {bs}; expected a power of two "
                              "from 1 MiB to 256 MiB", "the metadata is damaged")
        for label, value in (("logical", self.logical_sector_size),
                             ("physical", self.physical_sector_size)):
            if value not in (512, 4096):
                raise FormatError(self.name, f"{where}: {label} sector size {value}; expected "
                                  "512 or 4096", "the metadata is damaged")
        if self.size == 0 or self.size % self.logical_sector_size or self.size > fmt.MAX_VIRTUAL_SIZE:
            raise FormatError(self.name, f"{where}: virtual disk size {self.size}; expected a "
                              f"multiple of {self.logical_sector_size} up to 64 TiB",
                              "the metadata is damaged")
        self.locator: dict[str, str] = {}
        if self.has_parent:
            self.locator = self._parse_parent_locator(item(fmt.PARENT_LOCATOR, 20), where)

    def _parse_parent_locator(self, raw: bytes, where: str) -> dict[str, str]:
        what = f"{where}: parent locator"
        head = fmt.PARENT_LOCATOR_HEADER.parse(raw)
        if head.locator_type != fmt.VHDX_PARENT_LOCATOR_TYPE:
            raise FormatError(self.name, f"{what}: type {fmt.guid_text(head.locator_type)} is not "
                              "the VHDX parent locator type", "vhdfs knows VHDX parents only")
        if 20 + 12 * head.key_value_count > len(raw):
            raise FormatError(self.name, f"{what}: {head.key_value_count} entries do not fit in "
                              f"its {len(raw)} bytes", "the metadata is damaged")
        values: dict[str, str] = {}
        for index in range(head.key_value_count):
            entry = fmt.PARENT_LOCATOR_ENTRY.parse(raw[20 + 12 * index:32 + 12 * index])
            texts = []
            for offset, length in ((entry.key_offset, entry.key_length),
                                   (entry.value_offset, entry.value_length)):
                if offset + length > len(raw) or length % 2:
                    raise FormatError(self.name, f"{what}, entry {index}: {length} bytes at "
                                      f"offset {offset} lie outside the locator",
                                      "the metadata is damaged")
                try:
                    texts.append(raw[offset:offset + length].decode("utf-16-le"))
                except UnicodeDecodeError:
                    raise FormatError(self.name, f"{what}, entry {index}: not UTF-16 text",
                                      "the metadata is damaged") from None
            if texts[0] in values:
                raise FormatError(self.name, f"{what}, entry {index}: key {texts[0]!r} is listed "
                                  "twice", "the metadata is damaged (which parent is meant is "
                                  "ambiguous); vhdfs set-parent rewrites the locator")
            values[texts[0]] = texts[1]
        linkage = values.get("parent_linkage")
        if linkage is None:
            raise FormatError(self.name, f"{what}: no parent_linkage entry", "the metadata is damaged")
        ids = []
        for key in ("parent_linkage", "parent_linkage2"):
            if key in values:
                raw_id = fmt.parse_guid_text(values[key])
                if raw_id is None:
                    raise FormatError(self.name, f"{what}: {key} {values[key]!r} is not a GUID",
                                      "the metadata is damaged")
                ids.append(raw_id)
        self.parent_ids = tuple(ids)
        return values

    def _read_bat(self) -> None:
        region = self.regions[fmt.BAT_REGION]
        self.chunk_ratio = fmt.chunk_ratio(self.block_size, self.logical_sector_size)
        self.block_count = -(-self.size // self.block_size)
        entries = fmt.bat_entry_count(self.size, self.block_size, self.logical_sector_size,
                                      self.has_parent)
        if entries * 8 > region.end - region.start:
            raise FormatError(self.name, f"BAT region at offset {region.start}: "
                              f"{region.end - region.start} bytes, but a disk of {self.size} bytes "
                              f"in {self.block_size}-byte blocks needs {entries} entries "
                              f"({entries * 8} bytes)", "the region table or the metadata is damaged")
        bat = array.array("Q", self._read(region.start, entries * 8))
        if sys.byteorder == "big":
            bat.byteswap()
        self.bat = bat
        self._check_bat()

    def _check_bat(self) -> None:
        """Mark payload blocks whose BAT entry (or sector bitmap entry) cannot be followed."""
        ratio, bs = self.chunk_ratio, self.block_size
        # (start, end, what, block) with block -1 - chunk for a chunk's sector bitmap
        stored: list[tuple[int, int, str, int]] = []
        for block in range(self.block_count):
            entry = self.bat[fmt.payload_index(block, ratio)]
            state, offset = entry & fmt.STATE_MASK, entry & fmt.OFFSET_MASK
            where = f"BAT entry {fmt.payload_index(block, ratio)} (block {block})"
            if state not in fmt.PAYLOAD_STATES:
                self.bad_blocks[block] = f"{where} has state {state}, which is undefined"
                continue
            if state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT and not self.has_parent:
                self.bad_blocks[block] = f"{where} is partially present in a file without a parent"
                continue
            if state < fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
                continue
            length = min(bs, self.size - block * bs)
            reason = self._storage_problem(offset, length)
            if reason:
                self.bad_blocks[block] = f"{where} points to file offset {offset}, {reason}"
                continue
            stored.append((offset, offset + length, f"block {block}", block))
            if state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                sb_index = fmt.bitmap_index(block, ratio)
                sb = self.bat[sb_index]
                sb_offset = sb & fmt.OFFSET_MASK
                if sb & fmt.STATE_MASK != fmt.SB_BLOCK_PRESENT:
                    self.bad_blocks[block] = (f"{where} is partially present but its sector bitmap "
                                              f"(BAT entry {sb_index}) is not")
                elif reason := self._storage_problem(sb_offset, fmt.SECTOR_BITMAP_BLOCK):
                    self.bad_blocks[block] = (f"{where}: its sector bitmap (BAT entry {sb_index}) "
                                              f"points to file offset {sb_offset}, {reason}")
        if self.has_parent:
            for chunk in range(-(-self.block_count // ratio)):
                sb_index = fmt.bitmap_index(chunk * ratio, ratio)
                sb = self.bat[sb_index]
                state, start = sb & fmt.STATE_MASK, sb & fmt.OFFSET_MASK
                where = f"BAT entry {sb_index} (the sector bitmap of chunk {chunk})"
                if state == fmt.SB_BLOCK_PRESENT:
                    if reason := self._storage_problem(start, fmt.SECTOR_BITMAP_BLOCK):
                        self.bad_bitmaps[chunk] = f"{where} points to file offset {start}, {reason}"
                        continue
                    stored.append((start, start + fmt.SECTOR_BITMAP_BLOCK,
                                   f"the sector bitmap of chunk {chunk}", -1 - chunk))
                elif state != fmt.SB_BLOCK_NOT_PRESENT:
                    self.bad_bitmaps[chunk] = f"{where} has state {state}, which is undefined"
        stored.sort()
        previous: tuple[int, int, str, int] | None = None
        for item in stored:
            if previous is not None and item[0] < previous[1]:
                for one, other in ((item, previous), (previous, item)):
                    reason = f"{one[2]} at file offset {one[0]} shares its storage with {other[2]}"
                    if one[3] >= 0:
                        self.bad_blocks.setdefault(one[3], reason)
                    else:  # a sector bitmap: only writing would go wrong (refused)
                        self.bad_bitmaps.setdefault(-1 - one[3], reason)
            if previous is None or item[1] > previous[1]:
                previous = item
        for block in sorted(self.bad_blocks)[:3]:
            self._warn(f"{self.name}: {self.bad_blocks[block]}; that block cannot be read")
        if len(self.bad_blocks) > 3:
            self._warn(f"{self.name}: {len(self.bad_blocks) - 3} more damaged BAT entries")

    def _storage_problem(self, offset: int, length: int) -> str:
        if offset < fmt.HEADER_SECTION_SIZE:
            return "inside the header section (the first MiB)"
        if offset + length > self.data_size:
            return f"past the end of the file ({self.data_size} bytes)"
        for span in self.spans:
            if offset < span.end and span.start < offset + length:
                return f"inside the {span.name} [{span.start}, {span.end})"
        return ""

    # ---------------------------------------------------------------- facts
    @property
    def current_header(self) -> Any:
        return self.headers.current

    @property
    def header_number(self) -> int:
        return self.headers.number

    @property
    def sector_size(self) -> int:
        """Writes are whole multiples of this, aligned to it: a differencing file says per
        logical sector whether it holds the data, other files store any 512 bytes."""
        return self.logical_sector_size if self.has_parent else 512

    @property
    def disk_type(self) -> DiskType:
        if self.has_parent:
            return DiskType.DIFFERENCING
        return DiskType.FIXED if self.leave_blocks_allocated else DiskType.DYNAMIC

    @property
    def is_differencing(self) -> bool:
        return self.has_parent

    @property
    def unique_id(self) -> bytes:
        """What a child's parent_linkage names: the DataWriteGuid of the current header."""
        return bytes(self.current_header.data_write_guid)

    @property
    def parent_id(self) -> bytes | None:
        return self.parent_ids[0] if self.has_parent else None

    @property
    def parent_name(self) -> str:
        return ""  # VHDX has no parent name field; the locator entries name the parent

    @property
    def locator_entries(self) -> list[LocatorEntry]:
        return [LocatorEntry(index, key, self.locator[key])
                for index, key in enumerate(PATH_KEYS) if self.locator.get(key)]

    def allocated_blocks(self) -> int:
        ratio = self.chunk_ratio
        return sum(1 for block in range(self.block_count)
                   if self.bat[fmt.payload_index(block, ratio)] & fmt.STATE_MASK
                   >= fmt.PAYLOAD_BLOCK_FULLY_PRESENT)

    def block_state(self, block: int) -> int:
        return self.bat[fmt.payload_index(block, self.chunk_ratio)] & fmt.STATE_MASK

    def describe(self) -> dict[str, Any]:
        """What `vhdfs info` shows (the keys of a VHD layer's facts, plus VHDX ones)."""
        hdr = self.current_header
        item: dict[str, Any] = {
            "path": self.name,
            "format": "vhdx",
            "disk_type": self.disk_type.name.lower(),
            "virtual_size": self.size,
            "current_size": self.size,
            "chs_size": self.size,
            "geometry": [],
            "block_size": self.block_size,
            "blocks": self.block_count,
            "allocated_blocks": self.allocated_blocks(),
            "unique_id": fmt.guid_text(hdr.data_write_guid),
            "creator": self.creator,
            "created": "(VHDX keeps no creation time)",
            "file_size": self.file_size,
            "logical_sector_size": self.logical_sector_size,
            "physical_sector_size": self.physical_sector_size,
            "virtual_disk_id": fmt.guid_text(self.virtual_disk_id),
            "data_write_guid": fmt.guid_text(hdr.data_write_guid),
            "file_write_guid": fmt.guid_text(hdr.file_write_guid),
            "header": {"number": self.header_number, "sequence": hdr.sequence_number},
            "log": ("clean" if self.replay is None else
                    f"{len(self.replay.entries)} entries replayed in memory"),
        }
        if self.bad_blocks:
            item["damaged_blocks"] = sorted(self.bad_blocks)
        if self.has_parent:
            item["parent_id"] = fmt.guid_text(self.parent_ids[0])
            if len(self.parent_ids) > 1:
                item["parent_id2"] = fmt.guid_text(self.parent_ids[1])
            item["parent_name"] = ""
            item["locators"] = [{"index": e.index, "code": e.code, "path": e.text}
                                for e in self.locator_entries]
        if self.warnings:
            item["warnings"] = list(self.warnings)
        return item

    # ---------------------------------------------------------------- reading
    def read_data(self, file_offset: int, length: int) -> bytes:
        return self._read(file_offset, length)

    def read_into(self, file_offset: int, view: memoryview) -> None:
        end = file_offset + len(view)
        if self.replay is None or (end <= self.file_size and (
                end <= self.replay.low or file_offset >= self.replay.high)):
            self.source.read_into(file_offset, view)  # no copy where the log changed nothing
        else:
            view[:] = self._read(file_offset, len(view))

    @property
    def _bitmap_bytes(self) -> int:
        """Bytes of sector bitmap per payload block."""
        return fmt.SECTOR_BITMAP_BLOCK // self.chunk_ratio

    def _bitmap_offset(self, block: int) -> int:
        sb = self.bat[fmt.bitmap_index(block, self.chunk_ratio)] & fmt.OFFSET_MASK
        return sb + (block % self.chunk_ratio) * self._bitmap_bytes

    def _block_bitmap(self, block: int) -> bytearray:
        """The block's bitmap, cached (the caller holds the lock while it uses it)."""
        with self._lock:
            cached = self._bitmaps.get(block)
            if cached is not None:
                self._bitmaps.move_to_end(block)
                return cached
            bitmap = bytearray(self._read(self._bitmap_offset(block), self._bitmap_bytes))
            self._bitmaps[block] = bitmap
            while len(self._bitmaps) > BITMAP_CACHE_BLOCKS:
                oldest = next(iter(self._bitmaps))
                if oldest in self._dirty_bitmaps or oldest in self._committing:
                    break  # kept until flushed: the file may not hold these bits yet
                del self._bitmaps[oldest]
            return bitmap

    def block_runs(self, block: int) -> list[Run]:
        """The runs of one whole block (clipped at the disk size)."""
        start = block * self.block_size
        length = min(self.block_size, self.size - start)
        bad = self.bad_blocks.get(block)
        if bad is not None:
            raise FormatError(self.name, bad, "the image is damaged; that block cannot be read")
        entry = self.bat[fmt.payload_index(block, self.chunk_ratio)]
        state, offset = entry & fmt.STATE_MASK, entry & fmt.OFFSET_MASK
        if state == fmt.PAYLOAD_BLOCK_NOT_PRESENT:
            return [Run(RunKind.BELOW if self.has_parent else RunKind.ZERO, start, length)]
        if state < fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
            return [Run(RunKind.ZERO, start, length)]
        if state == fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
            return [Run(RunKind.HERE, start, length, offset)]
        lss = self.logical_sector_size
        out = []
        with self._lock:
            runs = lsb_runs(self._block_bitmap(block), 0, -(-length // lss))
        for first, count, here in runs:
            inner = first * lss
            size = min(count * lss, length - inner)
            if here:
                out.append(Run(RunKind.HERE, start + inner, size, offset + inner))
            else:
                out.append(Run(RunKind.BELOW, start + inner, size))
        return out

    def map(self, offset: int, length: int) -> list[Run]:
        """Runs covering [offset, offset + length) of the virtual disk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: range {offset}+{length} is outside the disk "
                               f"of {self.size} bytes", errno.EINVAL)
        out: list[Run] = []
        end = offset + length
        block = offset // self.block_size
        while block * self.block_size < end:
            for run in self.block_runs(block):
                lo, hi = max(run.offset, offset), min(run.offset + run.length, end)
                if lo >= hi:
                    continue
                file_offset = run.file_offset + (lo - run.offset) if run.kind is RunKind.HERE else -1
                out.append(Run(run.kind, lo, hi - lo, file_offset))
            block += 1
        return out

    # ---------------------------------------------------------------- writing
    def _open_for_writing(self) -> None:
        """Refuse what cannot be written safely; make a pending log replay permanent."""
        if self.bad_blocks or self.bad_bitmaps:
            damaged = self.bad_blocks or self.bad_bitmaps
            reason = damaged[min(damaged)]
            raise FormatError(self.name, reason, "refusing to write to a damaged image; copy "
                              f"what reads with vhdfs convert {self.name} out.vhdx --to vhdx")
        self.journal = Journal(self.source, self.headers)
        if self.replay is not None:
            entries = len(self.replay.entries)
            self.journal.replay_into_file(self.replay)
            self.replay = None
            self.file_size = self.data_size = self.source.size()
            log.info("%s: replayed %d log entr%s into the file", self.name, entries,
                     "y" if entries == 1 else "ies")
        # New storage goes past everything the file holds (and whatever a crash left
        # there unreferenced), on a whole MiB as the spec wants payload and bitmap blocks.
        self._next_free = -(-self.file_size // MiB) * MiB

    def _require_writable(self) -> None:
        if not self.writable or self.journal is None:
            raise RefusedError(f"{self.name}: opened read-only")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write whole sectors (see `sector_size`) at an aligned offset of the virtual disk.

        Per block: the data first, in place or in new space past the end of the file; the
        BAT entry and the sector bitmap bits only in memory, until `flush` sends them
        through the log. A crash before the flush leaves the previous contents.
        """
        self._require_writable()
        assert self.journal is not None
        length = len(data)
        unit = self.sector_size
        if offset % unit or length % unit:
            raise ImageIOError(f"{self.name}: write of {length} bytes at {offset} is not "
                               f"aligned to the {unit}-byte sector", errno.EINVAL)
        if offset < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: write of {length} bytes at {offset} runs past the "
                               f"end of the disk ({self.size} bytes)", errno.ENOSPC)
        if length == 0:
            return
        self.journal.begin_data()  # a new DataWriteGuid before the disk's contents change
        view = memoryview(data)
        done = 0
        while done < length:
            block, inner = divmod(offset + done, self.block_size)
            count = min(self.block_size - inner, length - done)
            with self._lock:
                state, storage = self._storage_for(block)
            self.source.write_at(storage + inner, view[done:done + count])
            if state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                with self._lock:
                    self._mark_written(block, storage, inner, count)
            done += count
        with self._lock:
            self._pending_sync = True
            dirty = len(self._dirty_bat) + len(self._dirty_bitmap_sectors)
        if dirty >= AUTO_FLUSH_SECTORS:
            self.flush()

    def _storage_for(self, block: int) -> tuple[int, int]:
        """(state, file offset) of the block's storage, allocated now if it has none
        (caller holds the lock)."""
        if block in self.bad_blocks:
            raise FormatError(self.name, self.bad_blocks[block], "the image is damaged")
        index = fmt.payload_index(block, self.chunk_ratio)
        entry = self.bat[index]
        state = entry & fmt.STATE_MASK
        if state >= fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
            return state, entry & fmt.OFFSET_MASK
        storage = self._allocate(self.block_size)
        if self.has_parent and state == fmt.PAYLOAD_BLOCK_NOT_PRESENT:
            # The parent shows through what is not written: per sector, from bits that
            # start clear whatever an earlier crash left in this block's bitmap.
            self._ensure_bitmap_block(block)
            self._bitmaps[block] = bytearray(self._bitmap_bytes)
            self._mark_bitmap_dirty(block)
            state = fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT
        else:
            # Not present in a file without a parent, or zero / unmapped / undefined: the
            # block reads as zeros, and so does new file space where nothing is written.
            state = fmt.PAYLOAD_BLOCK_FULLY_PRESENT
        self._set_entry(index, state, storage)
        return state, storage

    def _ensure_bitmap_block(self, block: int) -> None:
        index = fmt.bitmap_index(block, self.chunk_ratio)
        if self.bat[index] & fmt.STATE_MASK == fmt.SB_BLOCK_PRESENT:
            return
        self._set_entry(index, fmt.SB_BLOCK_PRESENT, self._allocate(fmt.SECTOR_BITMAP_BLOCK))

    def _mark_written(self, block: int, storage: int, inner: int, count: int) -> None:
        """After the data of a partially present block is written: its sectors are here."""
        block_length = min(self.block_size, self.size - block * self.block_size)
        if inner == 0 and count == block_length:
            # Every sector is this file's now: the bitmap no longer matters.
            self._set_entry(fmt.payload_index(block, self.chunk_ratio),
                            fmt.PAYLOAD_BLOCK_FULLY_PRESENT, storage)
            return
        lss = self.logical_sector_size
        set_lsb_bits(self._block_bitmap(block), inner // lss, count // lss)
        self._mark_bitmap_dirty(block)

    def _mark_bitmap_dirty(self, block: int) -> None:
        if block in self._dirty_bitmaps:
            return
        self._dirty_bitmaps.add(block)
        start = self._bitmap_offset(block)
        first = start - start % fmt.LOG_SECTOR
        self._dirty_bitmap_sectors.update(range(first, start + self._bitmap_bytes, fmt.LOG_SECTOR))

    def _allocate(self, length: int) -> int:
        """`length` bytes of new space at the end of the file (zeros until written)."""
        storage = self._next_free
        self.source.truncate(storage + length)
        self._next_free = storage + length
        self.file_size = self.data_size = self._next_free
        return storage

    def _set_entry(self, index: int, state: int, offset: int) -> None:
        self.bat[index] = fmt.bat_entry(state, offset)
        self._dirty_bat.add(index // BAT_ENTRIES_PER_SECTOR)

    def flush(self) -> None:
        """Make every completed write durable: the data, then the metadata through the log."""
        if not self.writable or self.journal is None:
            return
        with self._flush_lock:
            with self._lock:
                bitmaps, bat_sectors = set(self._dirty_bitmaps), set(self._dirty_bat)
                sectors = self._metadata_sectors(bitmaps, bat_sectors)
                self._dirty_bitmaps.clear()
                self._dirty_bitmap_sectors.clear()
                self._dirty_bat.clear()
                self._committing = bitmaps
                pending, self._pending_sync = self._pending_sync, False
            try:
                if sectors:
                    self.journal.commit(sectors)
                elif pending:
                    self.source.sync()
            except VhdfsError:
                with self._lock:  # not durable: kept dirty for the next attempt
                    for block in bitmaps:
                        self._mark_bitmap_dirty(block)
                    self._dirty_bat |= bat_sectors
                    self._pending_sync = True
                raise
            finally:
                with self._lock:
                    self._committing = set()

    def _metadata_sectors(self, bitmaps: set[int], bat_sectors: set[int]) -> list[tuple[int, bytes]]:
        """The 4 KiB sectors to log, in an order whose every prefix is a consistent file
        (caller holds the lock): first the sector bitmaps (bits of sectors already written,
        or of blocks no entry points at yet), then the BAT sectors from the last one back, so
        a chunk's sector bitmap entry (after its payload entries) is never applied after a
        payload entry that needs it."""
        per_block = self._bitmap_bytes
        pieces: dict[int, bytearray] = {}
        for block in sorted(bitmaps):
            bits = self._bitmaps[block]
            start = self._bitmap_offset(block)
            done = 0
            while done < per_block:
                at = start + done
                sector = at - at % fmt.LOG_SECTOR
                buf = pieces.get(sector)
                if buf is None:
                    buf = pieces[sector] = bytearray(self._read(sector, fmt.LOG_SECTOR))
                n = min(per_block - done, sector + fmt.LOG_SECTOR - at)
                buf[at - sector:at - sector + n] = bits[done:done + n]
                done += n
        out = [(offset, bytes(buf)) for offset, buf in sorted(pieces.items())]
        bat_start = self.regions[fmt.BAT_REGION].start
        for sector in sorted(bat_sectors, reverse=True):
            first = sector * BAT_ENTRIES_PER_SECTOR
            chunk = array.array("Q", self.bat[first:first + BAT_ENTRIES_PER_SECTOR])
            if sys.byteorder == "big":
                chunk.byteswap()
            raw = chunk.tobytes()
            at = bat_start + sector * fmt.LOG_SECTOR
            if len(raw) < fmt.LOG_SECTOR:  # the region's spare entries past the table stay
                raw += self._read(at + len(raw), fmt.LOG_SECTOR - len(raw))
            out.append((at, raw))
        return out

    def close(self) -> None:
        """Flush, and empty the log a write session used (a clean close)."""
        try:
            if self.writable and self.journal is not None:
                self.flush()
                self.journal.close()
        finally:
            self.source.close()

    def __enter__(self) -> VhdxLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

