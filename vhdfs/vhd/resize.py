"""A VHD's virtual size changed in place, every write ordered so that a crash (a kill, a
power loss) at any moment leaves the old disk or the new one.

The size lives in the footer (current size and geometry; a dynamic or differencing disk
also keeps a copy at offset 0) and, for a dynamic or differencing disk, in the number of
BAT entries (one per block; the dynamic header says how many the table holds). What changes,
in order, each step synced before the next:

fixed, grow      the old footer copied to the new end (the file grows by a hole); its old
                 place and any bytes between the old size and the new one zeroed; then the
                 new footer over the copy at the end. Until that one-sector write the file
                 ends with the old footer (a fixed disk may hold more bytes than its footer
                 says): the old disk.
fixed, shrink    the new footer over the old one (the new disk, with bytes past its end);
                 the new footer at the new end; the file cut after it.
dynamic, grow    when the table has no room for the new entries, the blocks stored where it
                 must grow are copied to the end of the file and their entries pointed at
                 the copies (same bytes: the old disk either way); the entries past the old
                 end set to "not allocated"; the header's table size; the last block's tail
                 past the old end cleared (zeros, or for a differencing disk its sector bitmap
                 bits); then the trailing footer and its copy at offset 0.
dynamic, shrink  the trailing footer and its copy (the new disk); the entries past the new end
                 cleared and the last block's tail cleared (a later grow must read zeros
                 there); the file cut after the last block still used, when the cut ones
                 were at its end.

Between the trailing footer and its copy at offset 0, vhdfs reads the new size (the trailing
footer counts; it warns that the copy differs) and qemu, which reads the copy of a dynamic
disk first, the old one: either way one of the two disks. `vhdfs resize` run again, or
`vhdfs check --repair`, makes the copy agree.

The policy (may this disk change size, are the bytes cut zeros, children, the chain) is the
caller's (vhdfs.resize); this module only lays out and orders the writes.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass, field

from vhdfs.errors import RefusedError, UsageError
from vhdfs.image import SECTOR
from vhdfs.sources.base import Source
from vhdfs.vhd.build import check_size
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer
from vhdfs.vhd.layer import DATA_ALIGNMENT, MAX_BAT_ENTRIES, PATH_CODES, UNALLOCATED, Layer

COPY_CHUNK = 4 * 1024 * 1024  # a relocated block is copied in pieces of this size
_ZEROS = bytes(COPY_CHUNK)


@dataclass
class VhdResized:
    """What a resize changed, for the report."""

    old_size: int
    new_size: int
    old_file_size: int
    new_file_size: int = 0
    old_table_entries: int = 0  # the dynamic header's table size (0 for a fixed disk)
    new_table_entries: int = 0
    moved_blocks: list[int] = field(default_factory=list)  # relocated to make room for the BAT
    freed_blocks: int = 0  # blocks past the new end (shrink), no longer referenced


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _write_zeros(source: Source, start: int, end: int) -> None:
    while start < end:
        count = min(COPY_CHUNK, end - start)
        source.write_at(start, _ZEROS[:count])
        start += count


def check_new_size(layer: Layer, new_size: int) -> None:
    """A size this VHD can take: whole sectors, within the format's limits, a table vhdfs
    (and others) will read."""
    check_size(new_size, layer.disk_type)
    if layer.disk_type != DiskType.FIXED:
        entries = -(-new_size // layer.block_size)
        if entries > MAX_BAT_ENTRIES:
            raise UsageError(
                f"{layer.name}: {new_size} bytes in its {layer.block_size}-byte blocks needs "
                f"{entries} BAT entries, more than the {MAX_BAT_ENTRIES} readers accept; convert "
                "it to larger blocks first (vhdfs convert IMAGE NEW.vhd --to dynamic "
                "--block-size 2M)")


def resize_vhd(source: Source, layer: Layer, new_size: int) -> VhdResized:
    """Give the VHD that `layer` read from `source` (writable, held exclusively) the virtual
    size `new_size`. `layer` must be fresh (nothing written through it) and undamaged."""
    check_new_size(layer, new_size)
    result = VhdResized(layer.size, new_size, source.size())
    if new_size == layer.size:
        result.new_file_size = result.old_file_size
        return result
    if layer.disk_type == DiskType.FIXED:
        _resize_fixed(source, layer, new_size)
    else:
        _DynamicResize(source, layer, result).run(new_size)
    result.new_file_size = source.size()
    return result


# ---------------------------------------------------------------- fixed
def _resize_fixed(source: Source, layer: Layer, new_size: int) -> None:
    old_size, footer_at = layer.size, layer.footer_offset
    old_footer = source.read_at(footer_at, FOOTER_SIZE)
    new_footer = layer.footer.resized(new_size).build()
    if new_size > old_size:
        end = footer_at
        if new_size > footer_at:
            source.write_at(new_size, old_footer)  # the file ends with the old footer: old disk
            source.sync()
            end = new_size
        # Bytes the new disk shows past the old end must be zeros: slack before the old
        # footer (a fixed disk may carry some) and the old footer itself.
        _write_zeros(source, old_size, min(new_size, footer_at + FOOTER_SIZE))
        source.sync()
        source.write_at(end, new_footer)  # one sector: from here the new disk
        source.sync()
        if end > new_size:  # the data area had room past the new size: the footer moves back
            _move_footer_back(source, new_footer, new_size)
        return
    source.write_at(footer_at, new_footer)  # one sector: the new disk, with bytes past its end
    source.sync()
    _move_footer_back(source, new_footer, new_size)


def _move_footer_back(source: Source, footer: bytes, at: int) -> None:
    """The (new, already current) footer written at `at` too, then the file cut after it."""
    source.write_at(at, footer)
    source.sync()
    source.truncate(at + FOOTER_SIZE)
    source.sync()


# ---------------------------------------------------------------- dynamic and differencing
@dataclass(frozen=True)
class _Area:
    start: int
    end: int
    what: str


class _DynamicResize:
    def __init__(self, source: Source, layer: Layer, result: VhdResized) -> None:
        assert layer.header is not None
        self.source, self.layer, self.result = source, layer, result
        self.name = layer.name
        self.header: DynamicHeader = layer.header
        self.block_size = layer.block_size
        self.bitmap_size = layer.bitmap_size
        self.footer_at = layer.footer_offset
        self.table_at = self.header.table_offset
        self.table_entries = self.header.max_table_entries
        result.old_table_entries = result.new_table_entries = self.table_entries
        self.differencing = layer.disk_type == DiskType.DIFFERENCING
        self.old_entries = -(-layer.size // self.block_size)
        # The whole table as stored, its padding to a whole sector included.
        self.table_bytes = _round_up(self.table_entries * 4, SECTOR)
        self.bat = _entries(source.read_at(self.table_at, self.table_bytes))

    # ------------------------------------------------------------ helpers
    def _block_end(self, entry: int) -> int:
        return entry * SECTOR + self.bitmap_size + self.block_size

    def _metadata(self) -> list[_Area]:
        """Everything in the file that is not a block: footer copy, header, locator data."""
        areas = [_Area(0, FOOTER_SIZE, "the footer copy"),
                 _Area(self.layer.footer.data_offset, self.layer.footer.data_offset + HEADER_SIZE,
                       "the dynamic header")]
        for index, loc in enumerate(self.header.locators if self.differencing else ()):
            if loc.platform_code in PATH_CODES and loc.data_length:
                areas.append(_Area(loc.data_offset,
                                   loc.data_offset + max(loc.space_bytes, loc.data_length),
                                   f"parent locator {index} ({loc.code_text!r})"))
        return areas

    def _used_blocks(self, entries: int) -> list[int]:
        return [i for i in range(entries) if self.bat[i] != UNALLOCATED]

    def _write_table(self, entries: list[int], upto: int) -> None:
        """Write the table sectors holding entries [0, upto) whose bytes differ from what is
        stored (each a one-sector write: an entry is old or new, never torn)."""
        wanted = _table_bytes(entries[:upto])
        stored = self.source.read_at(self.table_at, min(len(wanted), self.table_bytes))
        stored += bytes(len(wanted) - len(stored))
        for at in range(0, len(wanted), SECTOR):
            piece = wanted[at:at + SECTOR]
            if piece != stored[at:at + SECTOR]:
                self.source.write_at(self.table_at + at, piece)

    def _write_header(self, header: DynamicHeader) -> None:
        """The header's first sector holds the table offset, its size and the checksum: one
        sector write (the second sector, parent name and locators, is unchanged)."""
        raw = header.build()
        at = self.layer.footer.data_offset
        if self.source.read_at(at + SECTOR, HEADER_SIZE - SECTOR) != raw[SECTOR:]:
            raise RefusedError(f"{self.name}: the dynamic header at offset {at} changed while "
                               "it was resized; run vhdfs check")
        self.source.write_at(at, raw[:SECTOR])

    def _write_footers(self, footer: Footer, at: int) -> None:
        raw = footer.build()
        self.source.write_at(at, raw)
        self.source.sync()
        self.source.write_at(0, raw)
        self.source.sync()

    def _clear_tail(self, size: int) -> None:
        """The part of the block holding byte `size - 1` that lies past `size`: zeros (dynamic)
        or "not here" (differencing), so that the disk reads zeros (or the parent) there once
        it is larger. Not part of the disk of `size` bytes."""
        inner = size % self.block_size
        index = size // self.block_size
        if not inner or index >= len(self.bat) or self.bat[index] == UNALLOCATED:
            return
        start = self.bat[index] * SECTOR
        if self.differencing:
            bitmap = bytearray(self.source.read_at(start, self.bitmap_size))
            first, last = inner // SECTOR, self.block_size // SECTOR
            changed = False
            for sector in range(first, last):
                mask = 0x80 >> (sector & 7)
                if bitmap[sector >> 3] & mask:
                    bitmap[sector >> 3] &= ~mask & 0xFF
                    changed = True
            if changed:
                self.source.write_at(start, bytes(bitmap))
        else:
            _write_zeros(self.source, start + self.bitmap_size + inner,
                         start + self.bitmap_size + self.block_size)

    # ------------------------------------------------------------ grow and shrink
    def run(self, new_size: int) -> None:
        if new_size > self.layer.size:
            self._grow(new_size)
        else:
            self._shrink(new_size)

    def _grow(self, new_size: int) -> None:
        needed = -(-new_size // self.block_size)
        table_entries = max(self.table_entries, needed)
        room = _round_up(table_entries * 4, SECTOR)
        entries = list(self.bat[:self.old_entries])
        footer_at = self.footer_at
        if room > self.table_bytes:
            footer_at = self._make_room(entries, room)
        # The new entries: "not allocated", whatever the bytes past the old end held.
        entries += [UNALLOCATED] * (room // 4 - len(entries))
        self._write_table(entries, room // 4)
        self._clear_tail(self.layer.size)
        self.source.sync()
        if table_entries != self.table_entries:
            self._write_header(self.header.copy(max_table_entries=table_entries))
            self.source.sync()
            self.result.new_table_entries = table_entries
        self._write_footers(self.layer.footer.resized(new_size), footer_at)

    def _make_room(self, entries: list[int], room: int) -> int:
        """Free [table end, table start + room) for the table: blocks stored there are copied
        past the end of the file and their entries pointed at the copies. Returns where the
        trailing footer is then."""
        grow_from, grow_to = self.table_at + self.table_bytes, self.table_at + room
        for area in self._metadata():
            if area.start < grow_to and grow_from < area.end:
                raise RefusedError(
                    f"{self.name}: the BAT at offset {self.table_at} must grow to {room} bytes, "
                    f"but {area.what} is stored right after it (offset {area.start}); resize a "
                    "rewritten copy instead: vhdfs convert IMAGE NEW.vhd --to dynamic, then "
                    "vhdfs resize NEW.vhd SIZE")
        used = self._used_blocks(len(entries))
        in_the_way = [i for i in used if entries[i] * SECTOR < grow_to
                      and grow_from < self._block_end(entries[i])]
        ends = [self.footer_at, grow_to] + [self._block_end(entries[i]) for i in used] + \
            [area.end for area in self._metadata()]
        next_free = max(ends)
        if not in_the_way and self.footer_at >= grow_to:
            return self.footer_at
        moves: list[tuple[int, int]] = []  # (block, new entry)
        for index in sorted(in_the_way):
            bitmap_at = _round_up(next_free + self.bitmap_size, DATA_ALIGNMENT) - self.bitmap_size
            moves.append((index, bitmap_at // SECTOR))
            next_free = bitmap_at + self.bitmap_size + self.block_size
        footer_at = next_free
        # 1. the file ends with the (old) footer past everything the copies need
        self.source.write_at(footer_at, self.source.read_at(self.footer_at, FOOTER_SIZE))
        self.source.sync()
        if not moves:
            return footer_at
        # 2. the copies, in space nothing references yet
        length = self.bitmap_size + self.block_size
        for index, entry in moves:
            start, target = entries[index] * SECTOR, entry * SECTOR
            for at in range(0, length, COPY_CHUNK):
                count = min(COPY_CHUNK, length - at)
                self.source.write_at(target + at, self.source.read_at(start + at, count))
        self.source.sync()
        # 3. the entries point at the copies (the same bytes: the old disk either way)
        for index, entry in moves:
            entries[index] = entry
        self._write_table(entries, len(entries))
        self.source.sync()
        self.result.moved_blocks = [index for index, _ in moves]
        return footer_at

    def _shrink(self, new_size: int) -> None:
        needed = -(-new_size // self.block_size)
        self._write_footers(self.layer.footer.resized(new_size), self.footer_at)
        # Past the new end: entries cleared, the last block's tail cleared (not part of the
        # new disk; a later grow must find zeros there).
        entries = list(self.bat[:self.old_entries])
        self.result.freed_blocks = sum(1 for e in entries[needed:] if e != UNALLOCATED)
        entries[needed:] = [UNALLOCATED] * (len(entries) - needed)
        self._clear_tail(new_size)
        self._write_table(entries, len(entries))
        self.source.sync()
        # The file cut after the last block still used, when the freed ones were at its end.
        ends = [self.table_at + self.table_bytes] + [area.end for area in self._metadata()] + \
            [self._block_end(e) for e in entries if e != UNALLOCATED]
        end = _round_up(max(ends), SECTOR)
        if end < self.footer_at:
            _move_footer_back(self.source, self.layer.footer.resized(new_size).build(), end)


def _entries(raw: bytes) -> list[int]:
    table = array.array("I", raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table.tolist()


def _table_bytes(entries: list[int]) -> bytes:
    table = array.array("I", entries)
    if sys.byteorder == "little":
        table.byteswap()
    raw = table.tobytes()
    tail = len(raw) % SECTOR
    return raw + b"\xff" * (SECTOR - tail) if tail else raw
