"""The repairs `vhdfs check --repair` can make, each a function of the writable source.

Every repair is ordered so that a crash part-way leaves a file that still opens: a footer is
one sector (written whole), BAT entries are dropped sector by sector, the file is truncated
in one call, and each repair ends with a sync before the next scan.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from pathlib import Path

from vhdfs.image import SECTOR
from vhdfs.maintain.faults import FaultySource
from vhdfs.maintain.files import remove_durably
from vhdfs.maintain.journals import (
    repair_journal_of,
    without_marker,
    write_footers,
    write_repair_journal,
)
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader, ParentLocator
from vhdfs.vhd.footer import FOOTER_SIZE, Footer
from vhdfs.vhd.layer import UNALLOCATED

# A repair is given the file as a FaultySource: its writes, and the steps it takes beside
# them (journals, deleted files), pass the job's fault points (crash tests stop at each).
Repair = Callable[[FaultySource], None]


def _write(source: FaultySource, offset: int, data: bytes) -> None:
    source.faults.point(f"write {len(data)} at {offset}")
    source.write_at(offset, data)


def _sync(source: FaultySource) -> None:
    source.faults.point("sync")
    source.sync()


def truncate(size: int) -> Repair:
    def apply(source: FaultySource) -> None:
        source.faults.point(f"truncate {size}")
        source.truncate(size)
        _sync(source)
    return apply


def write_footer(raw: bytes, offsets: list[int]) -> Repair:
    """Write one footer at each offset, the trailing one (highest) first."""
    def apply(source: FaultySource) -> None:
        for offset in sorted(offsets, reverse=True):
            _write(source, offset, raw)
        _sync(source)
    return apply


def write_header(offset: int, raw: bytes, then_remove: Path | None = None) -> Repair:
    def apply(source: FaultySource) -> None:
        _write(source, offset, raw)
        _sync(source)
        if then_remove is not None:
            remove_durably(then_remove, source.faults)
    return apply


def remove_file(path: Path) -> Repair:
    def apply(source: FaultySource) -> None:
        remove_durably(path, source.faults)
    return apply


def clear_locator(header_at: int, index: int) -> Repair:
    def apply(source: FaultySource) -> None:
        raw = source.read_at(header_at, HEADER_SIZE)
        header = DynamicHeader.parse(raw, source.name, header_at, verify=False)
        header.locators[index] = ParentLocator()
        _write(source, header_at, header.build())
        _sync(source)
    return apply


def _set_unallocated(source: FaultySource, bat_at: int, entries: dict[int, int]) -> None:
    """Set each entry still holding its recorded value to 0xFFFFFFFF, sector by sector."""
    by_sector: dict[int, list[int]] = {}
    for index in entries:
        by_sector.setdefault(bat_at + index * 4 // SECTOR * SECTOR, []).append(index)
    for sector_at, indices in sorted(by_sector.items()):
        table = array.array("I", source.read_at(sector_at, SECTOR))
        if sys.byteorder == "little":
            table.byteswap()
        changed = False
        for index in indices:
            slot = (index * 4 % SECTOR) // 4
            if table[slot] == entries[index]:
                table[slot] = UNALLOCATED
                changed = True
        if changed:
            if sys.byteorder == "little":
                table.byteswap()
            _write(source, sector_at, table.tobytes())
    _sync(source)


def drop_bat_entries(image: str, bat_at: int, entries: dict[int, int]) -> Repair:
    """Drop BAT entries as one step: a journal names them all first, so a crash between two
    BAT sectors cannot leave one half of a duplicated pair looking valid."""
    def apply(source: FaultySource) -> None:
        faults = source.faults
        if len({bat_at + i * 4 // SECTOR for i in entries}) > 1:
            write_repair_journal(image, bat_at, entries, faults)
        _set_unallocated(source, bat_at, entries)
        remove_durably(repair_journal_of(image), faults)
    return apply


def clear_commit_mark(source: FaultySource) -> None:
    end = source.size() - FOOTER_SIZE
    footer = Footer.parse(source.read_at(end, FOOTER_SIZE), source.name, end)
    write_footers(source, without_marker(footer), source.faults)


__all__ = ["truncate", "write_footer", "write_header", "remove_file", "clear_locator",
           "drop_bat_entries", "clear_commit_mark"]
