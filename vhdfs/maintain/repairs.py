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

from vhdfs.format.dynheader import HEADER_SIZE, DynamicHeader, ParentLocator
from vhdfs.format.footer import FOOTER_SIZE, DiskType, Footer, format_unique_id
from vhdfs.layer import SECTOR, UNALLOCATED
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.files import remove_durably
from vhdfs.maintain.findings import RANK_COMMIT, Fix
from vhdfs.maintain.marker import (
    PHASE_PREPARED,
    remove_journal,
    without_marker,
    write_footers,
)
from vhdfs.sources.base import Source

Repair = Callable[[Source], None]


def faults_of(source: Source) -> Faults:
    return getattr(source, "faults", None) or Faults()


def _write(source: Source, offset: int, data: bytes) -> None:
    faults_of(source).point(f"write {len(data)} at {offset}")
    source.write_at(offset, data)


def _sync(source: Source) -> None:
    faults_of(source).point("sync")
    source.sync()


def truncate(size: int) -> Repair:
    def apply(source: Source) -> None:
        faults_of(source).point(f"truncate {size}")
        source.truncate(size)
        _sync(source)
    return apply


def write_footer(raw: bytes, offsets: list[int]) -> Repair:
    """Write one footer at each offset, the trailing one (highest) first."""
    def apply(source: Source) -> None:
        for offset in sorted(offsets, reverse=True):
            _write(source, offset, raw)
        _sync(source)
    return apply


def write_header(offset: int, raw: bytes, then_remove: Path | None = None) -> Repair:
    def apply(source: Source) -> None:
        _write(source, offset, raw)
        _sync(source)
        if then_remove is not None:
            remove_durably(then_remove, faults_of(source))
    return apply


def remove_file(path: Path) -> Repair:
    def apply(source: Source) -> None:
        remove_durably(path, faults_of(source))
    return apply


def clear_locator(header_at: int, index: int) -> Repair:
    def apply(source: Source) -> None:
        raw = source.read_at(header_at, HEADER_SIZE)
        header = DynamicHeader.parse(raw, source.name, header_at, verify=False)
        header.locators[index] = ParentLocator()
        _write(source, header_at, header.build())
        _sync(source)
    return apply


def drop_bat_entry(bat_at: int, index: int) -> Repair:
    """Set one BAT entry to 0xFFFFFFFF by rewriting the one sector that holds it."""
    def apply(source: Source) -> None:
        sector_at = bat_at + index * 4 // SECTOR * SECTOR
        entries = array.array("I", source.read_at(sector_at, SECTOR))
        if sys.byteorder == "little":
            entries.byteswap()
        entries[(index * 4 % SECTOR) // 4] = UNALLOCATED
        if sys.byteorder == "little":
            entries.byteswap()
        _write(source, sector_at, entries.tobytes())
        _sync(source)
    return apply


def clear_commit_mark(source: Source) -> None:
    end = source.size() - FOOTER_SIZE
    footer = Footer.parse(source.read_at(end, FOOTER_SIZE), source.name, end)
    write_footers(source, without_marker(footer), faults_of(source))


def finish_commit(parent: str, state: dict, footer: Footer, search: list[str]) -> Fix | None:
    """Finish an unfinished commit into `parent`, or roll it back when nothing was written.

    Rolling back after the first write is not possible: the parent's old sectors are gone
    (keeping them would double the cost of every commit), so the only way to a consistent
    parent is forward.
    """
    if state.get("phase") == PHASE_PREPARED:
        def rollback(source: Source) -> None:
            clear_commit_mark(source)
            remove_journal(parent, faults_of(source))
        return Fix(RANK_COMMIT, "roll back the commit, which had not written anything yet: clear "
                   "the mark and delete the journal", rollback)
    child = find_committing_child(parent, state, footer, search)
    if child is None:
        return None

    def finish(source: Source) -> None:
        from vhdfs.maintain.commit import commit
        from vhdfs.resolve import OpenOptions

        commit(str(child), OpenOptions(parents=[parent]), faults=faults_of(source), quiet=True)
    return Fix(RANK_COMMIT, f"finish the commit: copy the rest of {child} into it, then clear the "
               "mark and the journal", finish)


def find_committing_child(parent: str, state: dict, footer: Footer, search: list[str]) -> Path | None:
    """The child named by the journal (or the mark), if it is where it can be found."""
    from vhdfs.maintain.siblings import find_children, unique_id_of

    wanted = state.get("child_unique_id")
    named = state.get("child")
    if named and Path(named).is_file() and _uid_text(unique_id_of(Path(named))) == wanted:
        return Path(named)
    folders = [Path(parent).parent] + [Path(folder) for folder in search]
    if named:
        folders.insert(0, Path(named).parent)
    for path in find_children(footer.unique_id, folders, exclude=[]):
        if _uid_text(unique_id_of(path)) == wanted:
            return path
    return None


def _uid_text(raw: bytes | None) -> str | None:
    return format_unique_id(raw) if raw else None


__all__ = ["truncate", "write_footer", "write_header", "clear_locator", "drop_bat_entry",
           "finish_commit", "DiskType"]
