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
from typing import Any, NoReturn

from vhdfs.blocks import (
    BitmapCache,
    bitmap_block_runs,
    check_map_range,
    check_write_range,
    map_blocks,
)
from vhdfs.errors import FormatError, ImageIOError, RefusedError, VhdfsError
from vhdfs.image import DiskType, LocatorEntry, Run, RunKind
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import metadata, rules
from vhdfs.vhdx.bitmap import lsb_runs, set_lsb_bits
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.journal import Journal
from vhdfs.vhdx.log import LogReplay, replay_log
from vhdfs.vhdx.rules import PATH_KEYS, Region

log = logging.getLogger("vhdfs")

MiB = fmt.MiB
BITMAP_CACHE_BLOCKS = 1024
# Changed metadata sectors after which a write flushes on its own: bounds memory and what a
# crash can lose, and keeps a commit within one entry of a 1 MiB log (254 sectors). Each
# flush costs two fsyncs: fewer, larger commits are what keep random writes fast.
AUTO_FLUSH_SECTORS = 128
BAT_ENTRIES_PER_SECTOR = fmt.LOG_SECTOR // 8


def is_vhdx(source: Source) -> bool:
    """True when the file starts with the VHDX file identifier."""
    return source.size() >= fmt.FILE_ID_SIZE and source.read_at(0, 8) == fmt.SIGNATURE


class VhdxLayer:
    """One VHDX file: fixed, dynamic or differencing; writable when opened so (a
    `vhdfs.image.ImageLayer`)."""

    image_format = "VHDX"
    header = None  # no VHD dynamic header
    bitmap_size = 0
    format_id = staticmethod(fmt.guid_text)  # ids shown as Windows shows them
    creation_time = None  # VHDX keeps no creation time

    def __init__(self, source: Source, *, size_rule: str = "auto", writable: bool = False) -> None:
        self.source = source
        self.name = source.name
        self.writable = writable
        self.warnings: list[str] = []
        self.bad_blocks: dict[int, str] = {}
        self.replay: LogReplay | None = None
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        # Kept until flushed: the file may not hold these bits yet.
        self._bitmaps = BitmapCache(BITMAP_CACHE_BLOCKS, lambda block: (
            block in self._dirty_bitmaps or block in self._committing))
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
        slots = rules.read_region_table_slots(self._read)
        usable = [slot for slot in slots if slot.table is not None]
        if not usable:
            self._fail(rules.both_tables_damaged(slots))
        if slots[0].table is None:
            self._warn(f"{self.name}: {slots[0].problem}; using region table 2")
        layout, problem = rules.region_layout(usable[0].table, self.current_header, self.data_size)
        if problem is not None:
            self._fail(problem)
        self.spans = layout.spans
        return layout.regions

    def _fail(self, problem: rules.Problem) -> NoReturn:
        raise FormatError(self.name, problem.what, problem.fix)

    def _read_metadata(self) -> None:
        region = self.regions[fmt.METADATA_REGION]
        meta, problem = rules.parse_metadata(self._read(region.start, region.end - region.start),
                                             region)
        if problem is not None:
            self._fail(problem)
        assert meta is not None
        self.metadata = meta
        self.block_size = meta.block_size
        self.leave_blocks_allocated = meta.leave_blocks_allocated
        self.has_parent = meta.has_parent
        self.size = meta.size
        self.virtual_disk_id = meta.virtual_disk_id
        self.logical_sector_size = meta.logical_sector_size
        self.physical_sector_size = meta.physical_sector_size
        self.locator: dict[str, str] = {}
        self.parent_ids = ()
        if self.has_parent:
            where = f"metadata region at offset {region.start}"
            locator, problem = rules.parse_parent_locator(meta.locator_raw, where)
            if problem is not None:
                self._fail(problem)
            self.locator, self.parent_ids = locator.values, locator.ids

    def _read_bat(self) -> None:
        region = self.regions[fmt.BAT_REGION]
        self.chunk_ratio = fmt.chunk_ratio(self.block_size, self.logical_sector_size)
        self.block_count = -(-self.size // self.block_size)
        entries = fmt.bat_entry_count(self.size, self.block_size, self.logical_sector_size,
                                      self.has_parent)
        if (problem := rules.bat_region_problem(region, entries, self.size,
                                                self.block_size)) is not None:
            self._fail(problem)
        bat = array.array("Q", self._read(region.start, entries * 8))
        if sys.byteorder == "big":
            bat.byteswap()
        self.bat = bat
        verdict = rules.check_bat(bat, self.bat_shape)
        self.bad_blocks, self.bad_bitmaps = verdict.bad_blocks, verdict.bad_bitmaps
        for block in sorted(self.bad_blocks)[:3]:
            self._warn(f"{self.name}: {self.bad_blocks[block]}; that block cannot be read")
        if len(self.bad_blocks) > 3:
            self._warn(f"{self.name}: {len(self.bad_blocks) - 3} more damaged BAT entries")

    @property
    def bat_shape(self) -> rules.BatShape:
        return rules.BatShape(self.size, self.block_size, self.chunk_ratio, self.has_parent,
                              self.data_size, tuple(self.spans))

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
    def commit_mark(self) -> bytes | None:
        """The DataWriteGuid of the child an unfinished `vhdfs commit` is copying into this
        file, as its metadata marks it (format.COMMIT_MARK_ITEM); None when unmarked."""
        mark = self.metadata.commit_mark
        return bytes(mark.child_id) if mark is not None else None

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
            cached = self._bitmaps.recent(block)
            if cached is not None:
                return cached
            bitmap = bytearray(self._read(self._bitmap_offset(block), self._bitmap_bytes))
            return self._bitmaps.keep(block, bitmap)

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
        with self._lock:
            runs = lsb_runs(self._block_bitmap(block), 0, -(-length // lss))
        return bitmap_block_runs(runs, lss, start, length, offset)

    def map(self, offset: int, length: int) -> list[Run]:
        """Runs covering [offset, offset + length) of the virtual disk."""
        check_map_range(self.name, offset, length, self.size)
        return map_blocks(self.block_runs, self.block_size, offset, length)

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
        check_write_range(self.name, offset, length, self.size)
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

    def write_metadata(self, region: bytes) -> None:
        """Replace the metadata region with `region` (vhdfs.vhdx.metadata.with_item makes
        it): the completed writes are flushed first, then the sectors that differ go through
        the log in one entry, so a crash leaves the old metadata or the new."""
        self._require_writable()
        assert self.journal is not None
        self.flush()
        meta = self.regions[fmt.METADATA_REGION]
        with self._flush_lock:
            old = self._read(meta.start, meta.end - meta.start)
            self.journal.commit(metadata.changed_sectors(meta.start, old, region), atomic=True)
        self._read_metadata()

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

