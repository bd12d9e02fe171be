"""The structure rules of a VHD file, once, for the reader and for `vhdfs check`.

`vhdfs.vhd.layer.Layer` asks each rule and raises the first fatal problem (or, for BAT
entries, marks the blocks it cannot read); `vhdfs.maintain.scan` asks the same rules and
turns every problem into a finding. So a file the reader refuses is one the checker reports,
with the same words: a `Problem` is what is wrong and where (`what`), and what it means or
what to do (`fix`), and reads as the reader's error does (`message`).

Field offsets in the messages ("block size (byte 32)") come from the construct declarations
in `footer.py` and `dynheader.py`, never typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vhdfs.errors import FormatError
from vhdfs.image import SECTOR
from vhdfs.vhd.dynheader import (
    HEADER_SIZE,
    HEADER_STRUCT,
    LOCATOR_STRUCT,
    PLATFORM_MAC,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    PLATFORM_WI2K,
    PLATFORM_WI2R,
    DynamicHeader,
    ParentLocator,
)
from vhdfs.vhd.footer import FOOTER_SIZE, FOOTER_STRUCT, DiskType, Footer

UNALLOCATED = 0xFFFFFFFF  # a BAT entry of a block that is not stored
MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 256 * 1024 * 1024
# The BAT is read into memory whole and checked at open: a larger table than the biggest VHD
# (2040 GiB) needs in 512 KiB blocks is a damaged size or block size (or a hostile sparse file
# asking for gigabytes). 2 MiB blocks reach 8 TiB within it.
MAX_BAT_ENTRIES = 1 << 22
# Locator codes whose data is a path (read, and its space kept clear of blocks).
PATH_CODES = (PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX, PLATFORM_WI2R, PLATFORM_WI2K)
# ... and the Mac alias, which is no path but whose space is still the locator's.
KNOWN_CODES = PATH_CODES + (PLATFORM_MAC,)
MAX_LOCATOR_BYTES = 64 * 1024  # more is no path: a damaged length


def footer_byte(field: str) -> int:
    """Where a footer field starts (its declaration in vhdfs.vhd.footer)."""
    return FOOTER_STRUCT.offset(field)


def header_byte(field: str) -> int:
    """Where a dynamic header field starts (its declaration in vhdfs.vhd.dynheader)."""
    return HEADER_STRUCT.offset(field)


def locator_byte(index: int) -> int:
    """Where parent locator entry `index` starts in the dynamic header."""
    return header_byte("locators") + index * LOCATOR_STRUCT.sizeof()


@dataclass(frozen=True)
class Problem:
    """One broken rule: the finding code of `vhdfs check`, what is wrong and where (without
    the file's name), and what it means or what to do. `fatal`: a reader cannot go on."""

    code: str
    what: str
    fix: str = ""
    fatal: bool = True

    def error(self, source: str) -> FormatError:
        return FormatError(source, self.what, self.fix)

    def message(self, source: str) -> str:
        """The one line, as the reader's error says it."""
        return str(self.error(source))


@dataclass(frozen=True)
class Region:
    """Bytes [start, end) of the file that some structure owns (`what` names it)."""

    start: int
    end: int
    what: str

    def overlaps(self, start: int, end: int) -> bool:
        return start < self.end and self.start < end


def round_up(value: int) -> int:
    return -(-value // SECTOR) * SECTOR


# ---------------------------------------------------------------- the footer
def footer_problem(footer: Footer, offset: int, data_end: int) -> Problem | None:
    """Fields that make the footer at `offset` unusable (beyond its checksum); `data_end`:
    where the data area of the file ends (where the dynamic header must fit)."""
    where = f"footer at offset {offset}"
    if footer.disk_type not in (DiskType.FIXED, DiskType.DYNAMIC, DiskType.DIFFERENCING):
        return Problem("disk-type", f"{where}: disk type (byte {footer_byte('disk_type')}) is "
                       f"{footer.disk_type}; expected 2 (fixed), 3 (dynamic) or 4 (differencing)",
                       "the footer is damaged or the file is not a supported VHD")
    if footer.disk_type != DiskType.FIXED:
        return header_place_problem(footer, offset, data_end)
    return None


def header_place_problem(footer: Footer, offset: int, data_end: int) -> Problem | None:
    """Where the footer at `offset` puts the dynamic header: aligned, inside the data area."""
    at = footer.data_offset
    if at % SECTOR or at < FOOTER_SIZE or at + HEADER_SIZE > data_end:
        return Problem("header-offset", f"footer at offset {offset}: data offset (byte "
                       f"{footer_byte('data_offset')}) is {at}: a dynamic header there is "
                       f"unaligned or runs past the data area ending at {data_end}",
                       "the footer is damaged")
    return None


def disk_size_problem(size: int) -> Problem | None:
    if size % SECTOR:
        return Problem("disk-size", f"disk size {size} (footer byte "
                       f"{footer_byte('current_size')}) is not a multiple of 512",
                       "the footer is damaged")
    return None


def fixed_size_problem(size: int, data_end: int) -> Problem | None:
    """A fixed disk's data lies before its footer, which starts at `data_end`."""
    if size > data_end:
        return Problem("fixed-truncated", f"fixed disk of {size} bytes but only {data_end} "
                       f"bytes of data before the footer: {size - data_end} bytes of the disk "
                       "are missing", "the file is truncated")
    return None


# ---------------------------------------------------------------- the dynamic header
def needed_entries(size: int, block_size: int) -> int:
    """BAT entries a disk of `size` bytes in blocks of `block_size` uses."""
    return -(-size // block_size)


def is_block_size(block_size: int) -> bool:
    """A power of two from 512 bytes to 256 MiB."""
    return MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and not block_size & (block_size - 1)


def header_problem(header: DynamicHeader, header_at: int, size: int, data_end: int
                   ) -> Problem | None:
    """The first of: block size, table size, where the BAT lies (all fatal)."""
    where = f"dynamic header at offset {header_at}"
    bs = header.block_size
    if not is_block_size(bs):
        return Problem("block-size", f"{where}: block size (byte {header_byte('block_size')}) "
                       f"is {bs}; expected a power of two from 512 bytes to 256 MiB",
                       "the header is damaged")
    needed = needed_entries(size, bs)
    entries = header.max_table_entries
    if entries < needed:
        return Problem("bat-entries", f"{where}: max table entries (byte "
                       f"{header_byte('max_table_entries')}) is {entries}, but a disk of {size} "
                       f"bytes in {bs}-byte blocks needs {needed}",
                       "the header or the footer's size is damaged")
    if needed > MAX_BAT_ENTRIES:  # the same limit for every reader: no giant table in memory
        return Problem("bat-entries", f"{where}: a disk of {size} bytes in {bs}-byte blocks "
                       f"needs {needed} BAT entries, more than the {MAX_BAT_ENTRIES} vhdfs reads "
                       "(2040 GiB in 512 KiB blocks)",
                       "the footer's size or the header's block size is damaged")
    return bat_place_problem(header, header_at, data_end)


def bat_place_problem(header: DynamicHeader, header_at: int, data_end: int) -> Problem | None:
    where = f"dynamic header at offset {header_at}"
    bat_at, entries = header.table_offset, header.max_table_entries
    bat_len = round_up(entries * 4)
    if bat_at % SECTOR:
        return Problem("bat-offset", f"{where}: BAT offset (byte {header_byte('table_offset')}) "
                       f"is {bat_at}, not a multiple of 512", "the header is damaged")
    if bat_at < FOOTER_SIZE or bat_at + bat_len > data_end:
        return Problem("bat-offset", f"{where}: BAT at offset {bat_at} with {entries} entries "
                       f"({bat_len} bytes) ends past the data area ending at {data_end}",
                       "the header is damaged or the file is truncated")
    if bat_at < header_at + HEADER_SIZE and header_at < bat_at + bat_len:
        return Problem("bat-offset", f"{where}: BAT at offset {bat_at} overlaps the header",
                       "the header is damaged")
    return None


def metadata_regions(header: DynamicHeader, header_at: int) -> list[Region]:
    """What a dynamic disk's blocks must stay clear of (its locators' data comes on top)."""
    bat_at = header.table_offset
    return [Region(0, FOOTER_SIZE, "the footer copy"),
            Region(header_at, header_at + HEADER_SIZE, "the dynamic header"),
            Region(bat_at, bat_at + round_up(header.max_table_entries * 4), "the BAT")]


# ---------------------------------------------------------------- parent locators
def locator_name(index: int, loc: ParentLocator) -> str:
    return f"parent locator {index} ({loc.code_text!r}, header byte {locator_byte(index)})"


def locator_problem(index: int, loc: ParentLocator, data_end: int,
                    regions: Sequence[Region]) -> Problem | None:
    """Where a locator with data says its data is. Out of place is fatal (the path would be
    read from outside its room); on top of other metadata (`regions`) is not: the text is
    read, and the blocks that overlap it are what fail."""
    start, length = loc.data_offset, loc.data_length
    what = locator_name(index, loc)
    relink = "the header is damaged; vhdfs set-parent rewrites the locators"
    if length > loc.space_bytes:
        return Problem("locator-bad", f"{what}: data length {length} exceeds its data space "
                       f"{loc.space_bytes}", relink)
    if start % SECTOR or start < FOOTER_SIZE or start + length > data_end:
        return Problem("locator-bad", f"{what}: data at offset {start} ({length} bytes) is "
                       "outside the file or unaligned", relink)
    if length > MAX_LOCATOR_BYTES:
        return Problem("locator-bad", f"{what}: data length {length} is absurd for a path",
                       "the header is damaged")
    clash = next((r for r in regions if r.overlaps(start, start + length)), None)
    if clash is not None:
        return Problem("locator-bad", f"{what}: data at offset {start} ({length} bytes) "
                       f"overlaps {clash.what}", relink, fatal=False)
    return None


def locator_region(index: int, loc: ParentLocator, data_end: int) -> Region:
    """The room a locator's data owns: its data space (or length, if larger)."""
    end = loc.data_offset + max(loc.space_bytes, loc.data_length)
    return Region(loc.data_offset, min(end, data_end), locator_name(index, loc))


# ---------------------------------------------------------------- BAT entries
def bad_blocks(bat: Sequence[int], block_size: int, bitmap_size: int, size: int, data_end: int,
               regions: Sequence[Region]) -> dict[int, str]:
    """Blocks whose BAT entry points past the data area, into metadata (`regions`) or at
    another block's storage (both are suspect), and why. Such a block cannot be read;
    everything else still reads."""
    bad: dict[int, str] = {}
    # Sector and index packed in one int: half the memory of tuples for a big table.
    allocated = sorted(entry << 32 | index for index, entry in enumerate(bat)
                       if entry != UNALLOCATED)
    previous_end, previous_index, previous_start = -1, -1, -1
    for packed in allocated:
        start, index = (packed >> 32) * SECTOR, packed & 0xFFFFFFFF
        end = start + bitmap_size + min(block_size, size - index * block_size)
        where = f"BAT entry {index} (file offset {start})"
        if end > data_end:
            bad[index] = f"{where}: its block runs past the data area ending at {data_end}"
            continue  # a wild entry must not make the block whose storage it hits look bad
        owner = next((r.what for r in regions if r.overlaps(start, end)), None)
        if owner is not None:
            bad[index] = f"{where}: its block overlaps {owner}"
            continue
        if start < previous_end:
            bad[index] = f"{where}: its block shares its storage with block {previous_index}"
            bad.setdefault(previous_index, f"BAT entry {previous_index} (file offset "
                           f"{previous_start}): its block shares its storage with block {index}")
        if end > previous_end:
            previous_end, previous_index, previous_start = end, index, start
    return bad
