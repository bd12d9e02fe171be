"""One VHD file over one source: validation, the per-layer map, sector writes.

A layer knows nothing of its parent. `map` says, for a range of the virtual disk, which
parts this file holds (HERE, with the file offset), which it leaves to the layer below
(BELOW: differencing disks only) and which are zeros (ZERO). The chain combines layers.

Writes keep a crash at any moment readable (see `write` and `flush`): data first, then the
sector bitmap, then the BAT entry; the trailing footer moves before a new block is used.
Bitmap and BAT updates are kept in memory until `flush`, which orders them with fsync, so
a crash (even a power loss) never exposes a bitmap bit or BAT entry whose data is missing.
"""

from __future__ import annotations

import array
import errno
import logging
import sys
import threading
from typing import Any

from vhdfs.blocks import (
    BitmapCache,
    bitmap_block_runs,
    check_map_range,
    check_write_range,
    map_blocks,
)
from vhdfs.errors import ChecksumError, FormatError, ImageIOError, RefusedError, VhdfsError
from vhdfs.image import SECTOR, LocatorEntry, Run, RunKind
from vhdfs.sources.base import Source
from vhdfs.vhd import rules
from vhdfs.vhd.bitmap import bitmap_bytes, bitmap_runs, set_bits
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader, ParentLocator
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer, format_unique_id
from vhdfs.vhd.rules import (
    MAX_BAT_ENTRIES,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    PATH_CODES,
    UNALLOCATED,
    Region,
)
from vhdfs.vhd.timestamp import vhd_to_iso

log = logging.getLogger("vhdfs")

# Data of a new block starts on a 4 KiB boundary, as Windows does, so guest pages stay
# aligned with host pages.
DATA_ALIGNMENT = 4096
# Bitmaps kept in memory for reading; dirty ones are kept until flushed whatever this says.
BITMAP_CACHE_BLOCKS = 2048
# Dirty blocks after which a write flushes metadata on its own, bounding memory and loss.
AUTO_FLUSH_DIRTY_BLOCKS = 256
# New blocks go into room reserved before the trailing footer: the footer moves (and is
# synced) once per reservation, not once per block. The reservation doubles up to this size;
# what is left of it is given back at the next flush.
MAX_RESERVATION = 32 * 1024 * 1024


def _check_file_size(source: Source, file_size: int) -> None:
    if file_size == 0:
        raise FormatError(source.name, "the file is empty", "it is not a VHD image")
    if file_size < FOOTER_SIZE:
        raise FormatError(source.name, f"file size is {file_size} bytes, smaller than a "
                          "512-byte VHD footer", "the file is truncated or not a VHD image")
    if file_size % SECTOR:
        raise FormatError(source.name, f"file size is {file_size} bytes, not a multiple of 512",
                          "the file is truncated or has trailing bytes (vhdfs check --repair)")


class Layer:
    """One VHD file: fixed, dynamic or differencing (a `vhdfs.image.ImageLayer`)."""

    image_format = "VHD"
    sector_size = SECTOR  # writes are whole multiples of this, aligned to it
    logical_sector_size = SECTOR
    physical_sector_size = None  # a VHD records none
    virtual_disk_id = None  # a VHD has no id shared by its children
    format_id = staticmethod(format_unique_id)

    def __init__(self, source: Source, *, size_rule: str = "auto", writable: bool = False) -> None:
        self.source = source
        self.name = source.name
        self.writable = writable
        self.warnings: list[str] = []
        self.bad_blocks: dict[int, str] = {}
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._bitmaps = BitmapCache(BITMAP_CACHE_BLOCKS, lambda block: block in self._dirty_bitmaps)
        self._dirty_bitmaps: set[int] = set()
        self._dirty_bat: set[int] = set()
        self._pending_sync = False
        self._reserve_blocks = 0  # blocks the current reservation was made for (0: none)
        self._footer_from_copy = False
        self._metadata: list[Region] = []  # what blocks must stay clear of
        self.header: DynamicHeader | None = None
        self.block_size = 0
        self.bitmap_size = 0
        self.bat = array.array("I")
        self.locators: list[LocatorEntry] = []

        file_size = source.size()
        _check_file_size(source, file_size)
        self.footer_offset = file_size - FOOTER_SIZE
        self.footer = self._read_footer(file_size)
        self.disk_type = DiskType(self.footer.disk_type)
        self.size = self.footer.virtual_size(size_rule)
        self._raise(rules.disk_size_problem(self.size))
        if self.disk_type == DiskType.FIXED:
            self._raise(rules.fixed_size_problem(self.size, self.footer_offset))
        else:
            self._read_dynamic(file_size)
        if writable:
            self._refuse_damage_for_writing()

    # ---------------------------------------------------------------- opening
    def _raise(self, problem: rules.Problem | None) -> None:
        """A broken structure rule (vhdfs.vhd.rules) that reading cannot get past."""
        if problem is not None and problem.fatal:
            raise problem.error(self.name)

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)

    def _lenient(self, error: ChecksumError) -> None:
        """A checksum mismatch: an error for writing, a warning for reading."""
        if self.writable:
            raise error
        self._warn(f"{error} (reading anyway)")

    def _read_footer(self, file_size: int) -> Footer:
        raw = self.source.read_at(self.footer_offset, FOOTER_SIZE)
        try:
            footer = Footer.parse(raw, self.name, self.footer_offset)
        except ChecksumError as exc:
            self._lenient(exc)
            footer = Footer.parse(raw, self.name, self.footer_offset, verify=False)
        except FormatError as trailing_error:
            # A dynamic disk keeps a copy of the footer at offset 0: read-only use may go on.
            if file_size < 2 * FOOTER_SIZE or self.writable:
                raise
            try:
                footer = Footer.parse(self.source.read_at(0, FOOTER_SIZE), self.name, 0)
            except FormatError:
                raise trailing_error from None
            if footer.disk_type == DiskType.FIXED:
                raise trailing_error from None
            self._warn(f"{trailing_error}; using the footer copy at offset 0 "
                       "(vhdfs check --repair restores the trailing footer)")
            self._footer_from_copy = True
            return self._validate_footer(footer, 0)
        return self._validate_footer(footer, self.footer_offset)

    def _validate_footer(self, footer: Footer, offset: int) -> Footer:
        self._raise(rules.footer_problem(footer, offset, self.footer_offset))
        return footer

    def _read_dynamic(self, file_size: int) -> None:
        footer = self.footer
        if not self._footer_from_copy:
            copy = self.source.read_at(0, FOOTER_SIZE)
            trailing = self.source.read_at(self.footer_offset, FOOTER_SIZE)
            if copy != trailing:
                problem = ChecksumError(
                    self.name, "the footer copy at offset 0 differs from the footer at offset "
                    f"{self.footer_offset}", "vhdfs check --repair makes them agree")
                self._lenient(problem)
        raw = self.source.read_at(footer.data_offset, HEADER_SIZE)
        try:
            header = DynamicHeader.parse(raw, self.name, footer.data_offset)
        except ChecksumError as exc:
            self._lenient(exc)
            header = DynamicHeader.parse(raw, self.name, footer.data_offset, verify=False)
        self.header = header
        self._raise(rules.header_problem(header, footer.data_offset, self.size, self.footer_offset))
        self.block_size = header.block_size
        self.bitmap_size = bitmap_bytes(header.block_size)
        needed = rules.needed_entries(self.size, header.block_size)
        bat = array.array("I", self.source.read_at(header.table_offset, needed * 4))
        if sys.byteorder == "little":
            bat.byteswap()
        self.bat = bat
        self._bat_offset = header.table_offset
        self._metadata = rules.metadata_regions(header, footer.data_offset)
        self.locators = self._read_locators(header)
        self._check_bat()
        self._next_free = max([self.footer_offset] + [region.end for region in self._metadata])

    def _read_locators(self, header: DynamicHeader) -> list[LocatorEntry]:
        entries: list[LocatorEntry] = []
        if self.disk_type != DiskType.DIFFERENCING:
            return entries
        for index, loc in enumerate(header.locators):
            if loc.platform_code not in PATH_CODES:
                continue  # empty, a Mac alias or an unknown code: not read, its space not ours
            if loc.data_length == 0:
                continue
            self._raise(rules.locator_problem(index, loc, self.footer_offset, self._metadata))
            text = loc.decode(self.source.read_at(loc.data_offset, loc.data_length))
            self._metadata.append(rules.locator_region(index, loc, self.footer_offset))
            entries.append(LocatorEntry(index, loc.code_text, text))
        return entries

    def _check_bat(self) -> None:
        """Mark blocks whose BAT entry points into metadata, past the data area or at
        another block's storage (vhdfs.vhd.rules.bad_blocks). Reading such a block fails;
        everything else still reads."""
        self.bad_blocks = rules.bad_blocks(self.bat, self.block_size, self.bitmap_size, self.size,
                                           self.footer_offset, self._metadata)
        for index in sorted(self.bad_blocks)[:3]:
            self._warn(f"{self.name}: {self.bad_blocks[index]}; that block cannot be read "
                       "(vhdfs check --repair drops the entry)")
        if len(self.bad_blocks) > 3:
            self._warn(f"{self.name}: {len(self.bad_blocks) - 3} more damaged BAT entries")

    def _refuse_damage_for_writing(self) -> None:
        if self.bad_blocks:
            index = min(self.bad_blocks)
            raise FormatError(self.name, self.bad_blocks[index],
                              "refusing to write to a damaged image; run vhdfs check --repair")
        if self._footer_from_copy:
            raise FormatError(self.name, "the trailing footer is damaged",
                              "refusing to write; run vhdfs check --repair")

    # ---------------------------------------------------------------- facts
    @property
    def unique_id(self) -> bytes:
        return self.footer.unique_id

    @property
    def is_differencing(self) -> bool:
        return self.disk_type == DiskType.DIFFERENCING

    @property
    def parent_id(self) -> bytes | None:
        return self.header.parent_unique_id if self.is_differencing and self.header else None

    @property
    def parent_ids(self) -> tuple[bytes, ...]:
        return (self.parent_id,) if self.parent_id is not None else ()

    @property
    def parent_name(self) -> str:
        return self.header.parent_name if self.header and self.is_differencing else ""

    @property
    def locator_entries(self) -> list[LocatorEntry]:
        return list(self.locators)

    @property
    def creation_time(self) -> int:
        return self.footer.timestamp

    @property
    def commit_mark(self) -> bytes | None:
        return self.footer.commit_mark

    @property
    def block_count(self) -> int:
        return len(self.bat)

    def allocated_blocks(self) -> int:
        with self._lock:
            return sum(1 for entry in self.bat if entry != UNALLOCATED)

    def block_data_offset(self, index: int) -> int | None:
        """File offset of block `index`'s data, or None when the block is not allocated."""
        entry = self.bat[index]
        if entry == UNALLOCATED:
            return None
        return entry * SECTOR + self.bitmap_size

    def describe(self) -> dict[str, Any]:
        """What `vhdfs info` shows: the footer's and the header's facts."""
        footer = self.footer
        item: dict[str, Any] = {
            "path": self.name,
            "disk_type": self.disk_type.name.lower(),
            "virtual_size": self.size,
            "current_size": footer.current_size,
            "chs_size": footer.chs_size,
            "geometry": [footer.cylinders, footer.heads, footer.sectors_per_track],
            "block_size": self.block_size or None,
            "unique_id": format_unique_id(self.unique_id),
            "created": vhd_to_iso(footer.timestamp),
            "creator": footer.creator,
            "file_size": self.source.size(),
        }
        if self.header is not None:
            item["blocks"] = self.block_count
            item["allocated_blocks"] = self.allocated_blocks()
        if self.bad_blocks:
            item["damaged_blocks"] = sorted(self.bad_blocks)
        if self.is_differencing and self.header is not None:
            item["parent_id"] = format_unique_id(self.parent_id or b"")
            item["parent_name"] = self.parent_name
            item["parent_timestamp"] = vhd_to_iso(self.header.parent_timestamp)
            item["locators"] = [{"index": e.index, "code": e.code, "path": e.text}
                                for e in self.locator_entries]
        if self.warnings:
            item["warnings"] = list(self.warnings)
        return item

    # ---------------------------------------------------------------- reading
    def read_data(self, file_offset: int, length: int) -> bytes:
        return self.source.read_at(file_offset, length)

    def read_into(self, file_offset: int, view: memoryview) -> None:
        self.source.read_into(file_offset, view)

    def _bitmap(self, index: int) -> bytearray:
        with self._lock:
            cached = self._bitmaps.recent(index)
            if cached is not None:
                return cached
            entry = self.bat[index]
        bitmap = bytearray(self.source.read_at(entry * SECTOR, self.bitmap_size))
        with self._lock:
            return self._bitmaps.keep(index, bitmap)

    def block_runs(self, index: int) -> list[Run]:
        """The runs of one whole block (clipped at the disk size)."""
        start = index * self.block_size
        length = min(self.block_size, self.size - start)
        bad = self.bad_blocks.get(index)
        if bad is not None:
            raise FormatError(self.name, bad, "vhdfs check --repair drops the entry")
        entry = self.bat[index]
        if entry == UNALLOCATED:
            kind = RunKind.BELOW if self.is_differencing else RunKind.ZERO
            return [Run(kind, start, length)]
        data = entry * SECTOR + self.bitmap_size
        if not self.is_differencing:
            # Dynamic disks: an allocated block is read whole, as qemu and Windows do; the
            # bitmap of a dynamic disk is not authoritative (qemu writes all ones).
            return [Run(RunKind.HERE, start, length, data)]
        bitmap = self._bitmap(index)
        with self._lock:
            runs = bitmap_runs(bitmap, 0, -(-length // SECTOR))
        return bitmap_block_runs(runs, SECTOR, start, length, data)

    def map(self, offset: int, length: int) -> list[Run]:
        """Runs covering [offset, offset + length) of the virtual disk."""
        check_map_range(self.name, offset, length, self.size)
        if length == 0:
            return []
        if self.disk_type == DiskType.FIXED:
            return [Run(RunKind.HERE, offset, length, offset)]
        return map_blocks(self.block_runs, self.block_size, offset, length)

    # ---------------------------------------------------------------- writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise RefusedError(f"{self.name}: opened read-only")

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write whole sectors at a sector-aligned offset of the virtual disk.

        Order per block: the data, then (in memory, until flush) the bitmap bits and, for a
        new block, the BAT entry. A crash before the flush leaves the previous contents.
        """
        self._require_writable()
        length = len(data)
        if offset % SECTOR or length % SECTOR:
            raise ImageIOError(f"{self.name}: write of {length} bytes at {offset} is not "
                               "sector aligned", errno.EINVAL)
        check_write_range(self.name, offset, length, self.size)
        view = memoryview(data)
        if self.disk_type == DiskType.FIXED:
            self.source.write_at(offset, view)
            self._pending_sync = True
            return
        done = 0
        while done < length:
            position = offset + done
            index, inner = divmod(position, self.block_size)
            count = min(self.block_size - inner, length - done)
            with self._lock:
                if index in self.bad_blocks:
                    raise FormatError(self.name, self.bad_blocks[index], "run vhdfs check --repair")
                entry = self.bat[index]
                if entry == UNALLOCATED:
                    entry = self._allocate(index)
            self.source.write_at(entry * SECTOR + self.bitmap_size + inner, view[done:done + count])
            bitmap = self._bitmap(index)
            with self._lock:
                set_bits(bitmap, inner // SECTOR, count // SECTOR)
                self._dirty_bitmaps.add(index)
                self._bitmaps[index] = bitmap
            done += count
        self._pending_sync = True
        if len(self._dirty_bitmaps) >= AUTO_FLUSH_DIRTY_BLOCKS:
            self.flush()

    def _allocate(self, index: int) -> int:
        """Storage for block `index` after the last one (caller holds the lock).

        The block goes into room reserved before the trailing footer; when that is used up,
        the footer moves ahead first (see `_reserve`), so the file ends with a valid footer
        at every moment, power loss included. The new block is referenced only by the
        in-memory BAT until `flush`.
        """
        bitmap_at = -(-(self._next_free + self.bitmap_size) // DATA_ALIGNMENT) * DATA_ALIGNMENT \
            - self.bitmap_size
        block_end = bitmap_at + self.bitmap_size + self.block_size
        if block_end > self.footer_offset:
            self._reserve(block_end)
        # The bitmap's space is claimed now (zeros: "nothing here" until flushed): on a full
        # file system this request fails, not a later flush that must write the bitmap.
        self.source.write_at(bitmap_at, bytes(self.bitmap_size))
        self._next_free = block_end
        entry = bitmap_at // SECTOR
        self.bat[index] = entry
        self._dirty_bat.add(index)
        self._bitmaps[index] = bytearray(self.bitmap_size)
        self._dirty_bitmaps.add(index)
        return entry

    def _reserve(self, block_end: int) -> None:
        """Move the trailing footer to after `block_end` and room for more blocks.

        The footer is written at its new place and synced before its old place is zeroed
        (it may lie inside the new block, whose unwritten sectors must read as zeros) and
        before any block data is written there: without the sync a power loss could keep
        the data and lose the footer, leaving a file that does not end with one.
        """
        old_footer = self.footer_offset
        stride = -(-(self.bitmap_size + self.block_size) // DATA_ALIGNMENT) * DATA_ALIGNMENT
        self._reserve_blocks = min(max(1, 2 * self._reserve_blocks), max(1, MAX_RESERVATION // stride))
        new_footer = block_end + (self._reserve_blocks - 1) * stride
        try:
            self.source.write_at(new_footer, self.footer.build())
            self.source.sync()
            self.source.write_at(old_footer, bytes(FOOTER_SIZE))
        except ImageIOError:
            self._undo_allocation(old_footer)
            raise
        self.footer_offset = new_footer

    def _give_back_reservation(self) -> None:
        """After a flush: the footer back to the end of the last block, so the file keeps no
        unused room between writes. The footer is synced there before the file is cut."""
        with self._lock:
            end = self._next_free
            if self.footer_offset <= end:
                return
            try:
                self.source.write_at(end, self.footer.build())
                self.source.sync()
                self.source.truncate(end + FOOTER_SIZE)
            except (ImageIOError, NotImplementedError) as exc:
                # The footer at the end of the reserved room is still valid: nothing is lost.
                log.info("%s: reserved room not given back: %s", self.name, exc)
                return
            self.footer_offset = end
            self._reserve_blocks = 0

    def _undo_allocation(self, old_footer: int) -> None:
        """Best effort after a failed allocation: the old footer back, the file as before."""
        try:
            self.source.write_at(old_footer, self.footer.build())
            self.source.truncate(old_footer + FOOTER_SIZE)
        except (ImageIOError, NotImplementedError):
            log.warning("%s: could not shrink the file back after a failed allocation; it "
                        "stays readable (the new space is unused)", self.name)

    def flush(self) -> None:
        """Make every completed write durable, metadata after the data it describes."""
        if not self.writable:
            return
        with self._flush_lock:
            with self._lock:
                bitmaps = {i: bytes(self._bitmaps[i]) for i in self._dirty_bitmaps}
                bat_entries = sorted(self._dirty_bat)
                self._dirty_bitmaps.clear()
                self._dirty_bat.clear()
                pending, self._pending_sync = self._pending_sync, False
            if not bitmaps and not bat_entries:
                if pending:
                    self.source.sync()
                return
            try:
                self.source.sync()  # 1. the data
                for index, bitmap in sorted(bitmaps.items()):
                    self.source.write_at(self.bat[index] * SECTOR, bitmap)
                self.source.sync()  # 2. the bitmaps
                for first, last in _spans(bat_entries):
                    self._write_bat_span(first, last)
                self.source.sync()  # 3. the BAT entries
                self._give_back_reservation()
            except VhdfsError:
                with self._lock:  # not written: keep them dirty for the next attempt
                    self._dirty_bitmaps.update(bitmaps)
                    self._dirty_bat.update(bat_entries)
                raise

    def _write_bat_span(self, first: int, last: int) -> None:
        """Write the BAT sectors holding entries first..last from the in-memory table."""
        per_sector = SECTOR // 4
        lo = first // per_sector * per_sector
        hi = min(-(-(last + 1) // per_sector) * per_sector, len(self.bat))
        with self._lock:
            chunk = array.array("I", self.bat[lo:hi])
        if sys.byteorder == "little":
            chunk.byteswap()
        raw = chunk.tobytes()
        if len(raw) % SECTOR:
            # The last BAT sector may hold entries past the ones the disk needs: keep them.
            tail_at = self._bat_offset + len(raw)
            keep = self.source.read_at(tail_at, SECTOR - len(raw) % SECTOR)
            raw += keep
        self.source.write_at(self._bat_offset + lo * 4, raw)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.source.close()

    def __enter__(self) -> Layer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spans(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices grouped into (first, last) spans that share BAT sectors."""
    spans: list[tuple[int, int]] = []
    for index in indices:
        if spans and index // 128 <= spans[-1][1] // 128 + 1:
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))
    return spans


# The limits and codes live with the other structure rules (vhdfs.vhd.rules); these names
# stay importable from here.
__all__ = ["Layer", "Run", "RunKind", "LocatorEntry", "ParentLocator", "SECTOR", "UNALLOCATED",
           "MAX_BAT_ENTRIES", "MAX_BLOCK_SIZE", "MIN_BLOCK_SIZE", "PATH_CODES"]
