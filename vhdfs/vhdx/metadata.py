"""Changing a VHDX file's metadata region: one item replaced, added or removed, and the
changed 4 KiB sectors written through the log as one entry, so a crash leaves the old
metadata or the new, never a mix (set-parent's new parent locator, commit's mark).

The other rows of the metadata table and their items stay where they are, unknown items of
other tools included. A new value goes where the old one was when it fits there (up to the
next item or the end of the region), else after the last item, 8-byte aligned.
"""

from __future__ import annotations

from collections.abc import Callable

from vhdfs.errors import FormatError, RefusedError
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import rules
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.journal import Journal
from vhdfs.vhdx.log import replay_log

ROW = 32  # one metadata table entry
TABLE_HEAD = 32


def _rows(region: bytes) -> list[bytearray]:
    count = int.from_bytes(region[10:12], "little")
    count = min(count, (fmt.METADATA_TABLE_SIZE - TABLE_HEAD) // ROW)
    return [bytearray(region[TABLE_HEAD + ROW * i:TABLE_HEAD + ROW * (i + 1)]) for i in range(count)]


def _span(row: bytes) -> tuple[int, int]:
    offset = int.from_bytes(row[16:20], "little")
    length = int.from_bytes(row[20:24], "little")
    return offset, offset + length


def with_item(region: bytes, item_id: bytes, value: bytes | None, flags: int = 0) -> bytes:
    """The metadata region `region` with item `item_id` set to `value` (flags `flags`), or
    removed when `value` is None. Raises RefusedError when the region has no room left."""
    out = bytearray(region)
    rows = _rows(region)
    index = next((i for i, row in enumerate(rows) if bytes(row[:16]) == item_id), None)
    old = _span(rows[index]) if index is not None else None
    if old is not None and old[1] <= len(out) and old[0] >= fmt.METADATA_TABLE_SIZE:
        out[old[0]:old[1]] = bytes(old[1] - old[0])  # the old value is not left behind
    if value is None:
        if index is not None:
            del rows[index]
    else:
        others = sorted(_span(row) for i, row in enumerate(rows) if i != index)
        at = _place(others, old, len(value), len(region))
        row = bytearray(ROW)
        row[:16] = item_id
        row[16:20] = at.to_bytes(4, "little")
        row[20:24] = len(value).to_bytes(4, "little")
        row[24:28] = flags.to_bytes(4, "little")
        if index is None:
            if TABLE_HEAD + ROW * (len(rows) + 1) > fmt.METADATA_TABLE_SIZE:
                raise RefusedError("the metadata table is full; no item can be added")
            rows.append(row)
        else:
            rows[index] = row
        out[at:at + len(value)] = value
    out[10:12] = len(rows).to_bytes(2, "little")
    table = b"".join(bytes(row) for row in rows)
    out[TABLE_HEAD:fmt.METADATA_TABLE_SIZE] = table.ljust(fmt.METADATA_TABLE_SIZE - TABLE_HEAD, b"\0")
    return bytes(out)


def _place(others: list[tuple[int, int]], old: tuple[int, int] | None, length: int,
           region_length: int) -> int:
    def free(start: int) -> bool:
        end = start + length
        return end <= region_length and not any(a < end and start < b for a, b in others if b > a)

    if old is not None and old[0] >= fmt.METADATA_TABLE_SIZE and free(old[0]):
        return old[0]
    end = max([fmt.METADATA_TABLE_SIZE] + [b for _, b in others if b <= region_length])
    at = -(-end // 8) * 8
    if not free(at):
        raise RefusedError(f"the metadata region ({region_length} bytes) has no room for an "
                           f"item of {length} bytes")
    return at


def changed_sectors(region_start: int, old: bytes, new: bytes) -> list[tuple[int, bytes]]:
    """(file offset, 4 KiB) of every sector of the region that differs."""
    out = []
    for at in range(0, len(new), fmt.LOG_SECTOR):
        piece = new[at:at + fmt.LOG_SECTOR]
        if piece != old[at:at + fmt.LOG_SECTOR]:
            out.append((region_start + at, piece.ljust(fmt.LOG_SECTOR, b"\0")))
    return out


def read_metadata(source: Source, warn: Callable[[str], None] = lambda text: None
                  ) -> rules.Metadata:
    """The metadata region as every reader sees it (a pending log replayed in memory), read
    without the BAT and without parsing the parent locator; FormatError when the headers,
    the region tables or the metadata cannot be read."""
    name = source.name
    headers = Headers.read(source, warn)
    header = headers.current
    replay = None
    size = source.size()
    if header.log_guid != fmt.ZERO_GUID:
        replay = replay_log(source.read_at, name, size, header.log_guid, header.log_offset,
                            header.log_length)

    def read(offset: int, length: int) -> bytes:
        if replay is None:
            return source.read_at(offset, length)
        stored = max(0, min(length, size - offset))
        data = bytearray(source.read_at(offset, stored) if stored else b"")
        data += bytes(length - stored)
        replay.apply(offset, data)
        return bytes(data)

    return _metadata(name, read, header, replay.file_size if replay else size)


def _metadata(name: str, read: Callable[[int, int], bytes], header, data_size: int
              ) -> rules.Metadata:
    slots = rules.read_region_table_slots(read)
    usable = [slot for slot in slots if slot.table is not None]
    if not usable:
        problem = rules.both_tables_damaged(slots)
        raise FormatError(name, problem.what, problem.fix)
    layout, problem = rules.region_layout(usable[0].table, header, data_size)
    if problem is not None:
        raise FormatError(name, problem.what, problem.fix)
    region = layout.regions[fmt.METADATA_REGION]
    meta, problem = rules.parse_metadata(read(region.start, region.end - region.start), region)
    if problem is not None:
        raise FormatError(name, problem.what, problem.fix)
    assert meta is not None
    return meta


def edit_metadata(source: Source, change: Callable[[rules.Metadata], bytes | None],
                  warn: Callable[[str], None] = lambda text: None) -> bool:
    """Change the metadata region of the writable `source` in one log entry: `change` gets
    the region as read and returns the new region (None: nothing to change). The file is
    opened for writing as every writer opens it (a log left by a crash replayed into the
    file first), but its BAT is not read: a file whose parent locator a reader refuses
    can still get a new one. Returns whether anything was written."""
    name = source.name
    headers = Headers.read(source, warn)
    journal = Journal(source, headers)
    header = headers.current
    if header.log_guid != fmt.ZERO_GUID:
        replay = replay_log(source.read_at, name, source.size(), header.log_guid,
                            header.log_offset, header.log_length)
        if replay is not None:
            journal.replay_into_file(replay)
    meta = _metadata(name, source.read_at, headers.current, source.size())
    raw, region = meta.raw, meta.region
    new = change(meta)
    if new is None or new == raw:
        return False
    journal.commit(changed_sectors(region.start, raw, new), atomic=True)
    journal.close()  # a failure before it leaves the log, which the next open replays
    return True
