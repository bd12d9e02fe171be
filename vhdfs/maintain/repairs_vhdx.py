"""The repairs `vhdfs check --repair` makes to a VHDX file, each a function of the writable
source (a FaultySource, so crash tests can stop before any write or sync).

Each leaves a readable file if it is cut short, as the format allows:
- a header is rewritten from the current one into the other slot (sequence number plus
  one, a new FileWriteGuid), then the first copy the same way: a torn write fails its
  CRC-32C and the other copy is used, as before;
- a region table is copied whole from the good copy over the damaged one (64 KiB); torn,
  it still fails its CRC-32C and the good copy is read;
- the log is replayed into the file as a writer's open does (vhdfs.vhdx.journal): a crash
  leaves the log, which the next open replays again;
- BAT entries are dropped through the log, all of them in one entry: a crash leaves all of
  them dropped or none, so one half of two entries sharing storage never looks valid alone.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable

from vhdfs.errors import FormatError
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import rules
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.journal import Journal, new_guid
from vhdfs.vhdx.log import replay_log as find_replay

Repair = Callable[[Source], None]
BAT_ENTRIES_PER_SECTOR = fmt.LOG_SECTOR // 8


def _headers(source: Source) -> Headers:
    return Headers.read(source, lambda text: None)


def _writer(source: Source) -> Journal:
    """The journal of a write session, opened as every writer opens a file: a log left by a
    crash is replayed into the file first (a new log would hide it for good)."""
    headers = _headers(source)
    journal = Journal(source, headers)
    header = headers.current
    if header.log_guid != fmt.ZERO_GUID:
        replay = find_replay(source.read_at, source.name, source.size(), header.log_guid,
                             header.log_offset, header.log_length)
        if replay is not None:
            journal.replay_into_file(replay)
    return journal


def rewrite_headers() -> Repair:
    """Both header slots written from the current header: the damaged one first."""
    def apply(source: Source) -> None:
        headers = _headers(source)
        headers.update(source, file_write_guid=new_guid())
        headers.update(source)
    return apply


def replay_log() -> Repair:
    """The log's writes made permanent, the file grown to what the log says, the log emptied."""
    def apply(source: Source) -> None:
        _writer(source)
    return apply


def clear_log_guid() -> Repair:
    """Both headers say the log is empty (it holds nothing of the GUID they name)."""
    def apply(source: Source) -> None:
        headers = _headers(source)
        headers.update(source, file_write_guid=new_guid(), log_guid=fmt.ZERO_GUID)
        headers.update(source)
    return apply


def copy_region_table(good: int, damaged: int) -> Repair:
    """Region table `good` (1 or 2), checked again, written over region table `damaged`."""
    def apply(source: Source) -> None:
        slot = rules.read_region_table_slot(good, source.read_at(
            fmt.REGION_TABLE_OFFSETS[good - 1], fmt.REGION_TABLE_SIZE))
        if slot.table is None:
            raise FormatError(source.name, f"{slot.problem} (it changed since it was checked)",
                              "check the file again")
        source.write_at(fmt.REGION_TABLE_OFFSETS[damaged - 1], slot.raw)
        source.sync()
    return apply


def drop_bat_entries(bat_start: int, entries: dict[int, int]) -> Repair:
    """Set every BAT entry of `entries` ({index: value it held}) that still holds that value
    to 'not present' (offset 0), in one log entry."""
    def apply(source: Source) -> None:
        journal = _writer(source)
        by_sector: dict[int, list[int]] = {}
        for index in entries:
            by_sector.setdefault(index // BAT_ENTRIES_PER_SECTOR, []).append(index)
        sectors = []
        for sector, indices in sorted(by_sector.items(), reverse=True):
            at = bat_start + sector * fmt.LOG_SECTOR
            table = array.array("Q", source.read_at(at, fmt.LOG_SECTOR))
            if sys.byteorder == "big":
                table.byteswap()
            changed = False
            for index in indices:
                slot = index % BAT_ENTRIES_PER_SECTOR
                if table[slot] == entries[index]:
                    table[slot] = fmt.bat_entry(fmt.PAYLOAD_BLOCK_NOT_PRESENT)
                    changed = True
            if changed:
                if sys.byteorder == "big":
                    table.byteswap()
                sectors.append((at, table.tobytes()))
        journal.commit(sectors, atomic=True)
        journal.close()
    return apply


__all__ = ["rewrite_headers", "replay_log", "clear_log_guid", "copy_region_table",
           "drop_bat_entries"]
