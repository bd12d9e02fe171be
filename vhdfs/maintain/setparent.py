"""Re-link a differencing child to its parent after the parent moved or was renamed.

The parent name and the path locators (W2ru, W2ku, MacX; the deprecated Wi2r/Wi2k, which
would name the old place, are cleared) are rewritten; everything else stays. New locator
data never overwrites the old: it goes to fresh space at the end of the file, before the
footer, which moves up first (as a block allocation does). So until the header changes,
the old header's locators still point at intact data.

The header switch is one 1024-byte write of the two sectors at the header's offset. Should
a crash tear it (one sector new, one old), a journal written just before it,
`<child>.vhdfs-setparent`, holds the old and the new header; `vhdfs check --repair` writes
the new one. Without --force the parent's unique id (first header sector) does not change
and the locators all sit in the second sector, so even a torn header links to the old or
the new place, both checked by unique id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.errors import ParentMismatch, RefusedError
from vhdfs.image import SECTOR
from vhdfs.maintain.faults import Faults, FaultySource
from vhdfs.maintain.files import remove_durably, require_writable
from vhdfs.maintain.journals import (
    PendingHeader,
    pending_header,
    setparent_journal_of,
    write_setparent_journal,
)
from vhdfs.maintain.linkcheck import check_child, check_no_cycle, run_holding_child
from vhdfs.maintain.scan import scan_file
from vhdfs.maintain.scan_vhdx import is_vhdx_path
from vhdfs.maintain.setparent_vhdx import set_parent_vhdx
from vhdfs.resolve import OpenOptions
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.build import LOCATOR_MIN_SPACE, parent_locators
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
from vhdfs.vhd.footer import FOOTER_SIZE, Footer, format_unique_id
from vhdfs.vhd.layer import Layer

log = logging.getLogger("vhdfs")

REPLACED_CODES = (PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX, PLATFORM_WI2R, PLATFORM_WI2K)
# Problems set-parent mends (or that do not concern the link) and so does not refuse.
TOLERATED = {"locator-bad", "mid-commit"}
_EPOCH_2000 = 946684800


@dataclass
class SetParentResult:
    child: str
    parent: str
    parent_unique_id: str
    forced: bool
    old_name: str
    new_name: str
    old_locators: list[tuple[str, str]] = field(default_factory=list)
    new_locators: list[tuple[str, str]] = field(default_factory=list)
    moved_footer_to: int = 0


def _locator_texts(header: DynamicHeader, source: LocalFile) -> list[tuple[str, str]]:
    out = []
    for loc in header.locators:
        if loc.platform_code in REPLACED_CODES and 0 < loc.data_length <= loc.space_bytes:
            try:
                out.append((loc.code_text, loc.decode(source.read_at(loc.data_offset, loc.data_length))))
            except Exception:  # a damaged old locator is only shown, never needed
                out.append((loc.code_text, "(unreadable)"))
    return out


def plan_header(header: DynamicHeader, child_path: Path, parent_path: Path, tail: int
                ) -> tuple[DynamicHeader, list[tuple[int, bytes]], int]:
    """The new header, the locator data to write [(offset, data)] and where the footer goes."""
    new = header.copy(locators=[ParentLocator(loc.platform_code, loc.data_space, loc.data_length,
                                              loc.data_offset, loc.reserved)
                                for loc in header.locators])
    old_slots = {}
    for index, loc in enumerate(new.locators):
        if loc.platform_code in REPLACED_CODES:
            old_slots.setdefault(loc.platform_code, index)
            new.locators[index] = ParentLocator()
    placed: list[tuple[int, bytes]] = []
    position = tail
    for code, data in parent_locators(child_path.parent, parent_path):
        index = old_slots.get(code)
        if index is None or not new.locators[index].is_empty:
            index = next((i for i, loc in enumerate(new.locators) if loc.platform_code == b"\0\0\0\0"),
                         None)
        if index is None:
            raise RefusedError(f"{child_path}: all eight parent locator entries are in use by other "
                               "kinds; cannot add a path locator")
        space = max(-(-len(data) // SECTOR) * SECTOR, LOCATOR_MIN_SPACE)
        new.locators[index] = ParentLocator(code, space, len(data), position)
        placed.append((position, data.ljust(space, b"\0")))
        position += space
    new.parent_name_raw = DynamicHeader.encode_parent_name(parent_path.name)
    return new, placed, position


def set_parent(child: str, parent: str, *, force: bool = False, options: OpenOptions | None = None,
               faults: Faults | None = None) -> SetParentResult:
    if is_vhdx_path(child):  # a VHDX child: its parent locator item (vhdfs.maintain.setparent_vhdx)
        relinked = set_parent_vhdx(child, parent, force=force, options=options, faults=faults)
        for text in relinked.warnings:
            log.warning("%s", text)
        return SetParentResult(child=str(child), parent=str(parent),
                               parent_unique_id=relinked.parent_unique_id, forced=relinked.forced,
                               old_name="", new_name="", old_locators=relinked.old_locators,
                               new_locators=relinked.new_locators)
    return run_holding_child(child, parent, force, options, faults, _set_parent)


def _set_parent(child_path: Path, parent_path: Path, force: bool, options: OpenOptions,
                faults: Faults) -> SetParentResult:
    if pending_header(child_path) is not None:
        raise RefusedError(f"{child_path}: an earlier set-parent was interrupted; run vhdfs check "
                           f"--repair {child_path} to finish it first")
    with LocalFile(child_path) as probe:
        check_child(probe, child_path, lambda source: scan_file(source, size_rule=options.size_rule),
                    TOLERATED)
    require_writable(child_path, "the child", "set-parent rewrites its header")

    with LocalFile(parent_path) as parent_source, \
            Layer(parent_source, size_rule=options.size_rule) as parent_layer, \
            LocalFile(child_path, writable=True) as plain:
        source = FaultySource(plain, faults)
        end = source.size() - FOOTER_SIZE
        footer_raw = source.read_at(end, FOOTER_SIZE)
        footer = Footer.parse(footer_raw, source.name, end)
        header = DynamicHeader.parse(source.read_at(footer.data_offset, HEADER_SIZE), source.name,
                                     footer.data_offset)
        expected = header.parent_unique_id
        found = parent_layer.unique_id
        if found != expected and not force:
            raise ParentMismatch(
                f"{child_path}: expects a parent with unique id {format_unique_id(expected)}, but "
                f"{parent_path} has {format_unique_id(found)}; it is not the disk the child was "
                "made on. If you are certain it holds the same data, --force links it anyway "
                "(dangerous: a wrong parent makes the child read garbage)")
        child_size = footer.virtual_size(options.size_rule)
        if parent_layer.size != child_size:
            raise ParentMismatch(f"{child_path}: is {child_size} bytes but {parent_path} is "
                                 f"{parent_layer.size} bytes; a parent must have the child's size")
        warnings = check_no_cycle(plain.identity(), plain.name, parent_path, parent_layer, options)

        new, placed, new_footer_at = plan_header(header, child_path, parent_path, end)
        if found != expected:
            new.parent_unique_id = found
            mtime = int(parent_path.stat().st_mtime) - _EPOCH_2000
            new.parent_timestamp = min(max(0, mtime), 0xFFFFFFFF)
        result = SetParentResult(
            child=str(child_path), parent=str(parent_path), parent_unique_id=format_unique_id(found),
            forced=found != expected, old_name=header.parent_name, new_name=new.parent_name,
            old_locators=_locator_texts(header, plain), moved_footer_to=new_footer_at)
        old_raw, new_raw = source.read_at(footer.data_offset, HEADER_SIZE), new.build()

        # 1. the footer moves up first: the file stays a valid VHD at every step
        source.write_at(new_footer_at, footer_raw)
        # 2. the new locator data, into the space the old footer leaves
        for offset, data in placed:
            source.write_at(offset, data)
        source.sync()
        # 3. the journal that lets check --repair finish a torn header write
        write_setparent_journal(child_path, PendingHeader(footer.data_offset, old_raw, new_raw),
                                faults)
        # 4. the switch: one write of the header's two sectors
        source.write_at(footer.data_offset, new_raw)
        source.sync()
        remove_durably(setparent_journal_of(child_path), faults)
        result.new_locators = [(loc.code_text, loc.decode(data[:loc.data_length]))
                               for loc in new.locators for offset, data in placed
                               if loc.data_offset == offset and not loc.is_empty]
    for text in warnings:
        log.warning("%s", text)
    return result


__all__ = ["set_parent", "SetParentResult"]
