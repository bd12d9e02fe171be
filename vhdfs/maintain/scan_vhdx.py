"""Structure checks of one VHDX file, by the rules the reader opens it with (vhdfs.vhdx.rules).

The reader refuses a file at the first problem that makes it unreadable; a check has to look
at exactly those files, so this module applies the same rules to every structure in turn
and says for each problem what it is, where, and how (or whether) it can be mended without
guessing at data: the two headers and the log they name, the two region tables, the
metadata and the parent locator, the BAT (bounds, overlaps, states) and the sector bitmaps
of a differencing file, and an unfinished commit into the file.

A log left by a crash is read as the reader reads it (its writes laid over the file's
bytes in memory), so every later check sees the file as every reader will; `--repair`
replays it into the file first.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable
from pathlib import Path

from vhdfs.errors import FormatError, ImageIOError
from vhdfs.image import DiskType
from vhdfs.maintain import repairs_vhdx
from vhdfs.maintain.findings import (
    ERROR,
    NOTE,
    RANK_BAT,
    WARNING,
    CannotCheck,
    FileScan,
    Finding,
    Fix,
)
from vhdfs.maintain.journals import describe_state
from vhdfs.maintain.journals_vhdx import commit_state
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import rules
from vhdfs.vhdx.bitmap import lsb_runs
from vhdfs.vhdx.log import LogReplay, replay_log

# Repairs run lowest rank first, each rank followed by a fresh scan: the headers say where
# the log is, the log may rewrite any metadata, the region tables say where the BAT is.
RANK_HEADERS = 12
RANK_LOG = 14
RANK_REGION_TABLE = 16
BAT_ENTRIES_SHOWN = 8


class VhdxScanner:
    """One pass over one VHDX file. `scan()` returns a FileScan; it raises CannotCheck only
    when the file is not a VHDX at all or cannot be read."""

    def __init__(self, source: Source, *, bitmaps: bool = True) -> None:
        self.src = source
        self.name = source.name
        self.read_bitmaps = bitmaps
        self.result = FileScan(path=source.name)
        self.replay: LogReplay | None = None

    def add(self, code: str, severity: str, message: str, fix: Fix | None = None,
            hint: str = "") -> None:
        self.result.findings.append(Finding(code, severity, f"{self.name}: {message}", fix, hint))

    def fatal(self, problem: rules.Problem | tuple[str, str], hint: str = "") -> FileScan:
        code, what = (problem.code, problem.what) if isinstance(problem, rules.Problem) else problem
        self.add(code, ERROR, what, hint=hint or "not repairable without guessing; restore the "
                 "file from a backup, or copy what reads with vhdfs convert")
        self.result.fatal = True
        return self.result

    def read(self, offset: int, length: int) -> bytes:
        """File bytes as every reader sees them: with a pending log's writes laid over."""
        if self.replay is None:
            return self.src.read_at(offset, length)
        stored = max(0, min(length, self.file_size - offset))
        data = bytearray(self.src.read_at(offset, stored) if stored else b"")
        data += bytes(length - stored)
        self.replay.apply(offset, data)
        return bytes(data)

    # ---------------------------------------------------------------- the whole file
    def scan(self) -> FileScan:
        try:
            return self._scan()
        except ImageIOError as exc:
            raise CannotCheck(f"{self.name}: reading failed: {exc}") from None

    def _scan(self) -> FileScan:
        self.file_size = self.data_size = self.src.size()
        self.result.file_size = self.file_size
        if self.file_size < fmt.FILE_ID_SIZE or self.src.read_at(0, 8) != fmt.SIGNATURE:
            raise CannotCheck(f"{self.name}: no 'vhdxfile' signature at offset 0; not a VHDX file")
        header = self._headers()
        if header is None or not self._log(header):
            return self.result
        layout = self._region_tables(header)
        if layout is None:
            return self.result
        meta = self._metadata(layout)
        if meta is None:
            return self.result
        self._bat(layout, meta)
        if not self.result.fatal:
            self._commit_state(meta)
        return self.result

    # ---------------------------------------------------------------- headers and the log
    def _headers(self):  # -> the current header, or None (fatal)
        slots = rules.read_header_slots(self.src.read_at)
        current = rules.current_slot(slots)
        if current is None:
            self.fatal(rules.both_headers_damaged(slots))
            return None
        for slot in slots:
            if slot.problem:
                self.add("header-damaged", ERROR, f"{slot.problem}; header {current.number} "
                         f"(sequence {current.header.sequence_number}) is used",
                         Fix(RANK_HEADERS, f"rewrite header {slot.number} (and then header "
                             f"{current.number}) from header {current.number}",
                             repairs_vhdx.rewrite_headers(), group="headers"))
        other = slots[2 - current.number]
        if other.header is not None and other.raw != current.raw and \
                other.header.sequence_number == current.header.sequence_number:
            self.add("header-same-sequence", WARNING, f"both headers have sequence number "
                     f"{current.header.sequence_number} but differ; header {current.number} is "
                     "used (other readers may choose the other)",
                     Fix(RANK_HEADERS, f"rewrite both headers from header {current.number}",
                         repairs_vhdx.rewrite_headers(), group="headers"))
        if (problem := rules.log_version_problem(current)) is not None:
            self.fatal(problem)
            return None
        self.result.unique_id = bytes(current.header.data_write_guid)
        return current.header

    def _log(self, header) -> bool:
        where = f"header: log at offset {header.log_offset} ({header.log_length} bytes)"
        if header.log_guid == fmt.ZERO_GUID:
            if problem := rules.log_location_problem(header, self.file_size):
                self.add("log-location", WARNING, f"{where}: {problem}; readers do not need the "
                         "log of a clean file, but nothing can write it",
                         hint="copy what reads with vhdfs convert IMAGE out.vhdx --to vhdx")
            return True
        try:
            self.replay = replay_log(self.src.read_at, self.name, self.file_size, header.log_guid,
                                     header.log_offset, header.log_length)
        except FormatError as exc:
            self.fatal(("log-damaged", exc.what))
            return False
        if self.replay is None:
            self.add("log-guid-stale", WARNING, "the header names a log GUID, but the log holds "
                     "no entry of it (nothing to replay); qemu refuses to write such a file",
                     Fix(RANK_LOG, "clear the log GUID in both headers",
                         repairs_vhdx.clear_log_guid()))
            return True
        count = len(self.replay.entries)
        self.add("log-unreplayed", ERROR, f"the log holds {count} entr"
                 f"{'y' if count == 1 else 'ies'} not yet replayed ({self.replay.write_count} "
                 "sector write(s), left by a crash or an unclean close); readers replay them in "
                 "memory, the file itself is not yet consistent",
                 Fix(RANK_LOG, "replay the log into the file and empty it (as a writer's open "
                     "does)", repairs_vhdx.replay_log()))
        self.data_size = self.replay.file_size
        return True

    # ---------------------------------------------------------------- region tables
    def _region_tables(self, header) -> rules.Layout | None:
        slots = rules.read_region_table_slots(self.read)
        usable = [slot for slot in slots if slot.table is not None]
        if not usable:
            self.fatal(rules.both_tables_damaged(slots))
            return None
        good = usable[0]
        for slot in slots:
            if slot.table is None:
                self.add("region-table-damaged", ERROR, f"{slot.problem}; region table "
                         f"{good.number} is used",
                         Fix(RANK_REGION_TABLE, f"copy region table {good.number} over region "
                             f"table {slot.number}",
                             repairs_vhdx.copy_region_table(good.number, slot.number)))
        if len(usable) == 2 and slots[0].raw != slots[1].raw:
            self.add("region-table-differs", ERROR, "the two region tables differ; readers use "
                     "region table 1",
                     Fix(RANK_REGION_TABLE, "copy region table 1 over region table 2",
                         repairs_vhdx.copy_region_table(1, 2)))
        layout, problem = rules.region_layout(good.table, header, self.data_size)
        if problem is not None:
            self.fatal(problem)
            return None
        return layout

    # ---------------------------------------------------------------- metadata
    def _metadata(self, layout: rules.Layout) -> rules.Metadata | None:
        region = layout.regions[fmt.METADATA_REGION]
        meta, problem = rules.parse_metadata(self.read(region.start, region.end - region.start),
                                             region)
        if problem is not None:
            self.fatal(problem)
            return None
        assert meta is not None
        self.result.virtual_size = meta.size
        self.result.disk_type = int(DiskType.DIFFERENCING if meta.has_parent else
                                    DiskType.FIXED if meta.leave_blocks_allocated else
                                    DiskType.DYNAMIC)
        where = f"metadata region at offset {region.start}"
        if meta.has_parent:
            locator, problem = rules.parse_parent_locator(meta.locator_raw, where)
            if problem is not None:
                self.add(problem.code, ERROR, f"{problem.what}; readers refuse the file",
                         hint=rules.LOCATOR_FIX)
            else:
                for advice in rules.locator_advice(locator, where):
                    self.add(advice.code, WARNING, advice.what, hint=advice.fix)
        elif meta.item(fmt.PARENT_LOCATOR) is not None:
            self.add("locator-without-parent", WARNING, f"{where}: a parent locator item in a "
                     "file without a parent (HasParent clear); readers ignore it")
        return meta

    # ---------------------------------------------------------------- the BAT
    def _bat(self, layout: rules.Layout, meta: rules.Metadata) -> None:
        region = layout.regions[fmt.BAT_REGION]
        ratio = fmt.chunk_ratio(meta.block_size, meta.logical_sector_size)
        count = fmt.bat_entry_count(meta.size, meta.block_size, meta.logical_sector_size,
                                    meta.has_parent)
        if (problem := rules.bat_region_problem(region, count, meta.size,
                                                meta.block_size)) is not None:
            self.fatal(problem)
            return
        bat = array.array("Q", self.read(region.start, count * 8))
        if sys.byteorder == "big":
            bat.byteswap()
        shape = rules.BatShape(meta.size, meta.block_size, ratio, meta.has_parent,
                               self.data_size, tuple(layout.spans))
        verdict = rules.check_bat(bat, shape)
        self._entry_fields(bat, shape)
        below = "from the parent" if meta.has_parent else "as zeros"
        drops: dict[int, int] = {}
        for block in verdict.bad_blocks:
            index = fmt.payload_index(block, ratio)
            drops[index] = bat[index]
        for chunk in verdict.bad_bitmaps:
            index = fmt.bitmap_index(chunk * ratio, ratio)
            drops[index] = bat[index]
            for block in range(chunk * ratio, min((chunk + 1) * ratio, shape.block_count)):
                entry = bat[fmt.payload_index(block, ratio)]
                if entry & fmt.STATE_MASK == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                    drops[fmt.payload_index(block, ratio)] = entry
        drop = Fix(RANK_BAT, "", repairs_vhdx.drop_bat_entries(region.start, drops), group="drop-bat")
        for block, reason in sorted(verdict.bad_blocks.items()):
            first = block * meta.block_size
            last = min(first + meta.block_size, meta.size) - 1
            self.add("bat-bad-entry", ERROR, reason, Fix(
                RANK_BAT, f"drop BAT entry {fmt.payload_index(block, ratio)}: block {block} (disk "
                f"bytes {first}-{last}) then reads {below}", drop.apply, group=drop.group))
        for chunk, reason in sorted(verdict.bad_bitmaps.items()):
            partial = [fmt.payload_index(b, ratio) for b in range(chunk * ratio, (chunk + 1) * ratio)
                       if fmt.payload_index(b, ratio) in drops and b not in verdict.bad_blocks]
            also = (f" and the partially present entries that need it ({_shown(partial)}), whose "
                    "blocks then read from the parent") if partial else ""
            self.add("bat-bad-bitmap-entry", ERROR, reason, Fix(
                RANK_BAT, f"drop BAT entry {fmt.bitmap_index(chunk * ratio, ratio)} (the sector "
                f"bitmap of chunk {chunk}){also}", drop.apply, group=drop.group))
        good = [item for item in verdict.stored if not (
            item[3] >= 0 and item[3] in verdict.bad_blocks) and not (
            item[3] < 0 and -1 - item[3] in verdict.bad_bitmaps)]
        ends = [span.end for span in layout.spans] + [end for _, end, _, _ in good]
        self.result.data_end = max(ends)
        if self.data_size > self.result.data_end:
            self.add("unused-tail", NOTE, f"{self.data_size - self.result.data_end} bytes after "
                     f"the last block (from offset {self.result.data_end}) belong to no "
                     "structure (an allocation a crash left behind; harmless)")
        if meta.has_parent and self.read_bitmaps:
            self._bitmaps(bat, shape, meta, verdict)

    def _entry_fields(self, bat: array.array, shape: rules.BatShape) -> None:
        """Bits and entries readers ignore but the specification wants zero."""
        reserved = [i for i, entry in enumerate(bat) if entry & 0xFFFF8]
        if reserved:
            self.add("bat-reserved-bits", WARNING, f"{len(reserved)} BAT entries have reserved "
                     f"bits (3-19) set ({_shown(reserved)}); readers ignore them")
        ratio = shape.ratio
        payload = {fmt.payload_index(b, ratio) for b in range(shape.block_count)}
        stray = [i for i, entry in enumerate(bat) if i not in payload and entry and (
            not shape.has_parent or (i + 1) % (ratio + 1))]
        if not shape.has_parent:
            kind = "sector bitmap entries in a file without a parent"
        else:
            kind = "entries past the last block"
        if stray:
            self.add("bat-stray-entries", WARNING, f"{len(stray)} {kind} are not zero "
                     f"({_shown(stray)}); readers ignore them")

    def _bitmaps(self, bat: array.array, shape: rules.BatShape, meta: rules.Metadata,
                 verdict: rules.BatVerdict) -> None:
        """Sector bitmaps of the partially present blocks: marking no sector (space without
        data), marking sectors past the end of the disk; bitmap blocks nothing uses."""
        lss, ratio = meta.logical_sector_size, shape.ratio
        per_block = fmt.SECTOR_BITMAP_BLOCK // ratio
        sectors_per_block = meta.block_size // lss
        empty, past_end = [], []
        used_chunks: set[int] = set()
        for block in range(shape.block_count):
            entry = bat[fmt.payload_index(block, ratio)]
            if entry & fmt.STATE_MASK != fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT or \
                    block in verdict.bad_blocks:
                continue
            chunk = block // ratio
            used_chunks.add(chunk)
            sb = bat[fmt.bitmap_index(block, ratio)] & fmt.OFFSET_MASK
            bitmap = self.read(sb + (block % ratio) * per_block, per_block)
            used = -(-min(meta.block_size, meta.size - block * meta.block_size) // lss)
            if not any(here for _, _, here in lsb_runs(bitmap, 0, used)):
                empty.append(block)
            if used < sectors_per_block and any(
                    here for _, _, here in lsb_runs(bitmap, used, sectors_per_block - used)):
                past_end.append(block)
        if empty:
            self.add("bitmap-empty", NOTE, f"{len(empty)} partially present block(s) mark no "
                     f"sector in their bitmap (space without data): {_shown(empty)}")
        if past_end:
            self.add("bitmap-past-end", WARNING, f"the bitmap of block {past_end[0]} marks "
                     "sectors past the end of the disk (ignored)")
        unused = [chunk for chunk in range(shape.chunk_count)
                  if bat[fmt.bitmap_index(chunk * ratio, ratio)] & fmt.STATE_MASK ==
                  fmt.SB_BLOCK_PRESENT and chunk not in used_chunks and chunk not in verdict.bad_bitmaps]
        if unused:
            self.add("bitmap-unused", NOTE, f"{len(unused)} sector bitmap block(s) serve no "
                     f"partially present block (chunks {_shown(unused)}; harmless)")

    # ---------------------------------------------------------------- unfinished jobs
    def _commit_state(self, meta: rules.Metadata) -> None:
        state = commit_state(self.name, meta)
        if state is None:
            return
        self.result.commit_state = state
        # How to finish it is the commit's own business: vhdfs check attaches that repair
        # (vhdfs.maintain.commit_vhdx.unfinished_commit_fix) to this finding.
        self.result.findings.append(Finding("mid-commit", ERROR, describe_state(self.name, state),
                                            hint=state["finish"]))


def _shown(items: list[int]) -> str:
    return ", ".join(map(str, items[:BAT_ENTRIES_SHOWN])) + (
        " ..." if len(items) > BAT_ENTRIES_SHOWN else "")


def scan_vhdx_file(source: Source, *, bitmaps: bool = True) -> FileScan:
    return VhdxScanner(source, bitmaps=bitmaps).scan()


def scan_any(source: Source, scan_vhd: Callable[[], FileScan], *, bitmaps: bool = True) -> FileScan:
    """The scan of a VHDX file (signature at offset 0), else `scan_vhd()`."""
    if source.size() >= fmt.FILE_ID_SIZE and source.read_at(0, 8) == fmt.SIGNATURE:
        return scan_vhdx_file(source, bitmaps=bitmaps)
    return scan_vhd()


def is_vhdx_path(path: str | Path) -> bool:
    """Whether the local file at `path` starts with the VHDX signature (a glance, no lock)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == fmt.SIGNATURE
    except OSError:
        return False


__all__ = ["VhdxScanner", "scan_vhdx_file", "scan_any", "is_vhdx_path"]
