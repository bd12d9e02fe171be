"""The repairs `vhdfs check --repair` can make, each a function of the writable source.

Every repair is ordered so that a crash part-way leaves a file that still opens: a footer is
one sector (written whole), BAT entries are dropped sector by sector, the file is truncated
in one call, and each repair ends with a sync before the next scan.
"""

from __future__ import annotations

import array
import json
import sys
from collections.abc import Callable
from pathlib import Path

from vhdfs.image import SECTOR
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.files import remove_durably, write_atomic
from vhdfs.maintain.findings import RANK_COMMIT, Fix
from vhdfs.maintain.marker import (
    PHASE_PREPARED,
    remove_journal,
    without_marker,
    write_footers,
)
from vhdfs.sources.base import Source
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader, ParentLocator
from vhdfs.vhd.footer import FOOTER_SIZE, Footer, format_unique_id
from vhdfs.vhd.layer import UNALLOCATED

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


REPAIR_JOURNAL_SUFFIX = ".vhdfs-repair"
REPAIR_JOURNAL_FORMAT = "vhdfs-repair-journal"


def repair_journal_of(image: str | Path) -> Path:
    path = Path(image)
    return path.with_name(path.name + REPAIR_JOURNAL_SUFFIX)


def read_repair_journal(image: str | Path) -> tuple[int, dict[int, int]] | None:
    """(BAT offset, {entry: value it had}) of BAT drops a killed repair had begun."""
    try:
        data = json.loads(repair_journal_of(image).read_text())
        if data.get("format") != REPAIR_JOURNAL_FORMAT:
            return None
        return int(data["bat_offset"]), {int(k): int(v) for k, v in data["drop"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _set_unallocated(source: Source, bat_at: int, entries: dict[int, int]) -> None:
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
    def apply(source: Source) -> None:
        faults = faults_of(source)
        journal = repair_journal_of(image)
        if len({bat_at + i * 4 // SECTOR for i in entries}) > 1:
            record = {"format": REPAIR_JOURNAL_FORMAT, "version": 1, "bat_offset": bat_at,
                      "drop": {str(k): v for k, v in entries.items()}}
            write_atomic(journal, json.dumps(record).encode() + b"\n", faults)
        _set_unallocated(source, bat_at, entries)
        remove_durably(journal, faults)
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


__all__ = ["truncate", "write_footer", "write_header", "clear_locator", "drop_bat_entries",
           "finish_commit"]
