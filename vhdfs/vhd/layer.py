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
from collections import OrderedDict

from vhdfs.errors import ChecksumError, FormatError, ImageIOError, RefusedError, VhdfsError
from vhdfs.image import SECTOR, LocatorEntry, Run, RunKind
from vhdfs.sources.base import Source
from vhdfs.vhd.bitmap import bitmap_bytes, bitmap_runs, set_bits
from vhdfs.vhd.dynheader import (
    HEADER_SIZE,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    PLATFORM_WI2K,
    PLATFORM_WI2R,
    DynamicHeader,
    ParentLocator,
)
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer

log = logging.getLogger("vhdfs")

UNALLOCATED = 0xFFFFFFFF
MIN_BLOCK_SIZE = 512
# Locator codes whose data is a path (read, and its space kept clear of blocks).
PATH_CODES = (PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX, PLATFORM_WI2R, PLATFORM_WI2K)
MAX_BLOCK_SIZE = 256 * 1024 * 1024
# The BAT is read into memory whole and checked at open: a larger table than the biggest VHD
# (2040 GiB) needs in 512 KiB blocks is a damaged size or block size (or a hostile sparse file
# asking for gigabytes). 2 MiB blocks reach 8 TiB within it.
MAX_BAT_ENTRIES = 1 << 22
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
    """One VHD file: fixed, dynamic or differencing."""

    sector_size = SECTOR  # writes are whole multiples of this, aligned to it

    def __init__(self, source: Source, *, size_rule: str = "auto", writable: bool = False) -> None:
        self.source = source
        self.name = source.name
        self.writable = writable
        self.warnings: list[str] = []
        self.bad_blocks: dict[int, str] = {}
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._bitmaps: OrderedDict[int, bytearray] = OrderedDict()
        self._dirty_bitmaps: set[int] = set()
        self._dirty_bat: set[int] = set()
        self._pending_sync = False
        self._reserve_blocks = 0  # blocks the current reservation was made for (0: none)
        self._footer_from_copy = False
        self.header: DynamicHeader | None = None
        self.block_size = 0
        self.bitmap_size = 0
        self.bat = array.array("I")

        file_size = source.size()
        _check_file_size(source, file_size)
        self.footer_offset = file_size - FOOTER_SIZE
        self.footer = self._read_footer(file_size)
        self.disk_type = DiskType(self.footer.disk_type)
        self.size = self.footer.virtual_size(size_rule)
        if self.size % SECTOR:
            raise FormatError(self.name, f"disk size {self.size} (footer byte 48) is not a "
                              "multiple of 512", "the footer is damaged")
        if self.disk_type == DiskType.FIXED:
            if self.size > self.footer_offset:
                raise FormatError(
                    self.name, f"fixed disk of {self.size} bytes (footer current size) but only "
                    f"{self.footer_offset} bytes of data before the footer",
                    "the file is truncated")
        else:
            self._read_dynamic(file_size)
        if writable:
            self._refuse_damage_for_writing()

    # ---------------------------------------------------------------- opening
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
            return self._validate_footer(footer)
        return self._validate_footer(footer)

    def _validate_footer(self, footer: Footer) -> Footer:
        if footer.disk_type not in (2, 3, 4):
            raise FormatError(self.name, f"disk type (footer byte 60) is {footer.disk_type}; "
                              "expected 2 (fixed), 3 (dynamic) or 4 (differencing)",
                              "the footer is damaged or the file is not a supported VHD")
        if footer.disk_type != DiskType.FIXED:
            if footer.data_offset % SECTOR or footer.data_offset + HEADER_SIZE > self.footer_offset:
                raise FormatError(self.name, f"data offset (footer byte 16) is "
                                  f"{footer.data_offset}, outside the file or unaligned",
                                  "the footer is damaged")
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
        where = f"dynamic header at offset {footer.data_offset}"
        bs = header.block_size
        if bs < MIN_BLOCK_SIZE or bs > MAX_BLOCK_SIZE or bs & (bs - 1):
            raise FormatError(self.name, f"{where}: block size (byte 32) is {bs}; expected a "
                              "power of two from 512 bytes to 256 MiB", "the header is damaged")
        self.block_size = bs
        self.bitmap_size = bitmap_bytes(bs)
        needed = -(-self.size // bs)
        entries = header.max_table_entries
        if entries < needed:
            raise FormatError(self.name, f"{where}: max table entries (byte 28) is {entries}, "
                              f"but a disk of {self.size} bytes in {bs}-byte blocks needs {needed}",
                              "the header or the footer's size is damaged")
        if needed > MAX_BAT_ENTRIES:
            raise FormatError(self.name, f"{where}: a disk of {self.size} bytes in {bs}-byte blocks "
                              f"needs {needed} BAT entries, more than the {MAX_BAT_ENTRIES} vhdfs "
                              "reads (2040 GiB in 512 KiB blocks)",
                              "the footer's size or the header's block size is damaged")
        bat_offset = header.table_offset
        if bat_offset % SECTOR:
            raise FormatError(self.name, f"{where}: BAT offset (byte 16) is {bat_offset}, not a "
                              "multiple of 512", "the header is damaged")
        bat_region = -(-entries * 4 // SECTOR) * SECTOR
        if bat_offset < FOOTER_SIZE or bat_offset + bat_region > self.footer_offset:
            raise FormatError(self.name, f"{where}: BAT at offset {bat_offset} with {entries} "
                              f"entries ends past the data area (footer at {self.footer_offset})",
                              "the header is damaged or the file is truncated")
        hdr_start = footer.data_offset
        if bat_offset < hdr_start + HEADER_SIZE and hdr_start < bat_offset + bat_region:
            raise FormatError(self.name, f"{where}: BAT at offset {bat_offset} overlaps the "
                              "header", "the header is damaged")
        bat = array.array("I", self.source.read_at(bat_offset, needed * 4))
        if sys.byteorder == "little":
            bat.byteswap()
        self.bat = bat
        self._bat_offset = bat_offset
        self._metadata = [(0, FOOTER_SIZE, "the footer copy"),
                          (hdr_start, hdr_start + HEADER_SIZE, "the dynamic header"),
                          (bat_offset, bat_offset + bat_region, "the BAT")]
        self.locators = self._read_locators(header)
        self._check_bat()
        self._next_free = max([self.footer_offset] + [end for _, end, _ in self._metadata])

    def _read_locators(self, header: DynamicHeader) -> list[LocatorEntry]:
        entries: list[LocatorEntry] = []
        if self.disk_type != DiskType.DIFFERENCING:
            return entries
        for index, loc in enumerate(header.locators):
            if loc.platform_code not in PATH_CODES:
                continue  # empty, a Mac alias or an unknown code: not read, its space not ours
            if loc.data_length == 0:
                continue
            field_at = 576 + 24 * index
            what = f"parent locator {index} ({loc.code_text!r}, header byte {field_at})"
            if loc.data_length > loc.space_bytes:
                raise FormatError(self.name, f"{what}: data length {loc.data_length} exceeds its "
                                  f"data space {loc.space_bytes}",
                                  "the header is damaged; vhdfs set-parent rewrites the locators")
            if loc.data_offset % SECTOR or loc.data_offset < FOOTER_SIZE or \
                    loc.data_offset + loc.data_length > self.footer_offset:
                raise FormatError(self.name, f"{what}: data at offset {loc.data_offset} "
                                  f"({loc.data_length} bytes) is outside the file",
                                  "the header is damaged; vhdfs set-parent rewrites the locators")
            if loc.data_length > 64 * 1024:
                raise FormatError(self.name, f"{what}: data length {loc.data_length} is absurd "
                                  "for a path", "the header is damaged")
            text = loc.decode(self.source.read_at(loc.data_offset, loc.data_length))
            end = loc.data_offset + max(loc.space_bytes, loc.data_length)
            self._metadata.append((loc.data_offset, min(end, self.footer_offset), what))
            entries.append(LocatorEntry(index, loc.code_text, text))
        return entries

    def _check_bat(self) -> None:
        """Mark blocks whose BAT entry points into metadata, past the data area or at
        another block's storage. Reading such a block fails; everything else still reads."""
        # Sector and index packed in one int: half the memory of tuples for a big table.
        allocated = sorted(entry << 32 | index for index, entry in enumerate(self.bat)
                           if entry != UNALLOCATED)
        previous_end, previous_index, previous_start = -1, -1, -1
        for packed in allocated:
            start, index = (packed >> 32) * SECTOR, packed & 0xFFFFFFFF
            block_len = min(self.block_size, self.size - index * self.block_size)
            end = start + self.bitmap_size + block_len
            where = f"BAT entry {index} (file offset {start})"
            if end > self.footer_offset:
                self.bad_blocks[index] = f"{where} points past the data area ending at {self.footer_offset}"
                continue  # a wild entry must not make the block whose storage it hits look bad
            if owner := next((name for m_start, m_end, name in self._metadata
                              if start < m_end and m_start < end), None):
                self.bad_blocks[index] = f"{where} overlaps {owner}"
                continue
            if start < previous_end:
                reason = f"{where} overlaps the storage of block {previous_index}"
                self.bad_blocks[index] = reason
                self.bad_blocks.setdefault(previous_index, f"BAT entry {previous_index} (file "
                                           f"offset {previous_start}) shares its storage with "
                                           f"block {index}")
            if end > previous_end:
                previous_end, previous_index, previous_start = end, index, start
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
    def parent_name(self) -> str:
        return self.header.parent_name if self.header and self.is_differencing else ""

    @property
    def locator_entries(self) -> list[LocatorEntry]:
        return list(getattr(self, "locators", []))

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

    # ---------------------------------------------------------------- reading
    def read_data(self, file_offset: int, length: int) -> bytes:
        return self.source.read_at(file_offset, length)

    def read_into(self, file_offset: int, view: memoryview) -> None:
        self.source.read_into(file_offset, view)

    def _bitmap(self, index: int) -> bytearray:
        with self._lock:
            cached = self._bitmaps.get(index)
            if cached is not None:
                self._bitmaps.move_to_end(index)
                return cached
            entry = self.bat[index]
        bitmap = bytearray(self.source.read_at(entry * SECTOR, self.bitmap_size))
        with self._lock:
            cached = self._bitmaps.get(index)
            if cached is not None:  # another thread (or a writer) got there first
                return cached
            self._bitmaps[index] = bitmap
            while len(self._bitmaps) > BITMAP_CACHE_BLOCKS:
                oldest = next(iter(self._bitmaps))
                if oldest in self._dirty_bitmaps:
                    break
                del self._bitmaps[oldest]
            return bitmap

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
        out = []
        for first, count, here in runs:
            offset = first * SECTOR
            size = min(count * SECTOR, length - offset)
            if here:
                out.append(Run(RunKind.HERE, start + offset, size, data + offset))
            else:
                out.append(Run(RunKind.BELOW, start + offset, size))
        return out

    def map(self, offset: int, length: int) -> list[Run]:
        """Runs covering [offset, offset + length) of the virtual disk."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: range {offset}+{length} is outside the disk "
                               f"of {self.size} bytes", errno.EINVAL)
        if length == 0:
            return []
        if self.disk_type == DiskType.FIXED:
            return [Run(RunKind.HERE, offset, length, offset)]
        out: list[Run] = []
        end = offset + length
        index = offset // self.block_size
        while index * self.block_size < end:
            for run in self.block_runs(index):
                lo, hi = max(run.offset, offset), min(run.offset + run.length, end)
                if lo >= hi:
                    continue
                file_offset = run.file_offset + (lo - run.offset) if run.kind is RunKind.HERE else -1
                out.append(Run(run.kind, lo, hi - lo, file_offset))
            index += 1
        return out

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
        if offset < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: write of {length} bytes at {offset} runs past the "
                               f"end of the disk ({self.size} bytes)", errno.ENOSPC)
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


__all__ = ["Layer", "Run", "RunKind", "LocatorEntry", "ParentLocator", "SECTOR", "UNALLOCATED"]
