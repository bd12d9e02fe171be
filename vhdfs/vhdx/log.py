"""The VHDX metadata log: find the active sequence and replay it in memory.

A VHDX writer logs every metadata change (BAT, metadata region) before making it in
place. After a crash the log holds entries that may not have reached their places yet;
such an image must not be read as if it were clean. The spec requires a replay before
any use. Read-only use must not change the file, so the replay here is an overlay: the
sector writes of the active sequence, applied over the file's bytes whenever they are
read (the region table, metadata and BAT parsing included).

Finding the active sequence ([MS-VHDX] 2.3.3): every 4 KiB position of the circular log
may start an entry. An entry is valid when its header, its CRC-32C over the whole entry,
its descriptors and its data sectors all agree (signatures, the log GUID of the current
header, equal sequence numbers). Consecutive valid entries whose sequence numbers rise by
one form a sequence; the active one ends with the highest sequence number. Its last
entry's tail field says where replay starts (the oldest entry not yet known to be
flushed); when the tail points outside the sequence the whole sequence is replayed, as
qemu does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from construct import ConstructError

from vhdfs.errors import FormatError
from vhdfs.vhdx.format import (
    DATA_DESCRIPTOR,
    LOG_ENTRY,
    LOG_ENTRY_HEADER,
    LOG_ENTRY_HEADER_SIZE,
    LOG_SECTOR,
    ZERO_DESCRIPTOR,
    MiB,
    descriptor_sectors,
)

# A log bigger than this is not something Hyper-V or qemu writes (both use 1 MiB).
MAX_LOG_LENGTH = 256 * MiB
_ZERO_SECTOR = bytes(LOG_SECTOR)


@dataclass
class LogEntry:
    position: int  # offset inside the log
    length: int
    sequence: int
    tail: int
    flushed_file_offset: int
    last_file_offset: int
    # (file offset, 4 KiB of data) or (file offset, zero length) in descriptor order
    writes: list[tuple[int, bytes | int]] = field(default_factory=list)


@dataclass
class LogReplay:
    """The active sequence, as writes to lay over the file's bytes."""

    entries: list[LogEntry]
    file_size: int  # the size the file has once replayed
    sectors: dict[int, bytes] = field(default_factory=dict)  # 4 KiB-aligned offset -> data
    zeros: list[tuple[int, int]] = field(default_factory=list)  # [start, end) zeroed
    low: int = 0
    high: int = 0  # [low, high): the span of file offsets the replay touches

    def __post_init__(self) -> None:
        touched: list[tuple[int, int]] = []
        for entry in self.entries:
            for offset, what in entry.writes:
                if isinstance(what, int):
                    end = offset + what
                    for key in [k for k in self.sectors if offset <= k < end]:
                        del self.sectors[key]
                    self.zeros.append((offset, end))
                    touched.append((offset, end))
                else:
                    self.sectors[offset] = what
                    touched.append((offset, offset + LOG_SECTOR))
        if touched:
            self.low = min(start for start, _ in touched)
            self.high = max(end for _, end in touched)

    @property
    def write_count(self) -> int:
        return sum(len(entry.writes) for entry in self.entries)

    def apply(self, offset: int, data: bytearray) -> None:
        """Lay the replayed writes over `data`, the file's bytes at `offset`."""
        end = offset + len(data)
        if end <= self.low or offset >= self.high:
            return
        # Zero ranges first: a later data write of the same sector was kept in `sectors`,
        # an earlier one was dropped when the zero range was laid down.
        for start, stop in self.zeros:
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                data[lo - offset:hi - offset] = bytes(hi - lo)
        first = offset - offset % LOG_SECTOR
        for sector in range(first, end, LOG_SECTOR):
            payload = self.sectors.get(sector)
            if payload is None:
                continue
            lo, hi = max(sector, offset), min(sector + LOG_SECTOR, end)
            data[lo - offset:hi - offset] = payload[lo - sector:hi - sector]


class _CircularLog:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.length = len(raw)

    def read(self, position: int, size: int) -> bytes:
        position %= self.length
        if position + size <= self.length:
            return self.raw[position:position + size]
        first = self.raw[position:]
        return first + self.raw[:size - len(first)]


def _parse_entry(log: _CircularLog, position: int, log_guid: bytes) -> LogEntry | None:
    """The valid entry starting at `position`, or None."""
    try:
        head = LOG_ENTRY_HEADER.parse(log.read(position, LOG_ENTRY_HEADER_SIZE))
    except ConstructError:
        return None
    length = head.entry_length
    if length == 0 or length % LOG_SECTOR or length > log.length:
        return None
    if head.sequence_number == 0 or head.log_guid != log_guid:
        return None
    if descriptor_sectors(head.descriptor_count) * LOG_SECTOR > length:
        return None
    try:  # the checksum over the whole entry, and the data sectors' signatures
        body = LOG_ENTRY.parse(log.read(position, length)).tail.value
    except ConstructError:
        return None
    entry = LogEntry(position, length, head.sequence_number, head.tail,
                     head.flushed_file_offset, head.last_file_offset)
    sectors = iter(body.data_sectors)
    for desc in body.descriptors:
        if desc.sequence_number != head.sequence_number or desc.file_offset % LOG_SECTOR:
            return None
        if desc.signature == ZERO_DESCRIPTOR:
            zero_length = int.from_bytes(desc.leading_bytes, "little")
            if zero_length % LOG_SECTOR:
                return None
            entry.writes.append((desc.file_offset, zero_length))
        elif desc.signature == DATA_DESCRIPTOR:
            sector = next(sectors)
            if (sector.sequence_high << 32 | sector.sequence_low) != head.sequence_number:
                return None
            # 4 KiB to write: 8 leading bytes and 4 trailing bytes live in the descriptor.
            entry.writes.append((desc.file_offset,
                                 desc.leading_bytes + sector.data + desc.trailing_bytes))
        else:
            return None
    return entry


def find_active_sequence(raw_log: bytes, log_guid: bytes) -> list[LogEntry]:
    """The entries to replay, oldest first (empty when the log holds no valid sequence)."""
    log = _CircularLog(raw_log)
    entries: dict[int, LogEntry] = {}
    for position in range(0, log.length, LOG_SECTOR):
        entry = _parse_entry(log, position, log_guid)
        if entry is not None:
            entries[position] = entry
    best: list[LogEntry] = []
    for start in entries.values():
        chain = [start]
        position = (start.position + start.length) % log.length
        while position != start.position:
            following = entries.get(position)
            if following is None or following.sequence != chain[-1].sequence + 1:
                break
            chain.append(following)
            position = (position + following.length) % log.length
        if not best or (chain[-1].sequence, len(chain)) > (best[-1].sequence, len(best)):
            best = chain
    if not best:
        return []
    tail = best[-1].tail
    for index, entry in enumerate(best):
        if entry.position == tail:
            return best[index:]
    return best


def replay_log(read_at: Callable[[int, int], bytes], name: str, file_size: int, log_guid: bytes,
               log_offset: int, log_length: int) -> LogReplay | None:
    """Replay the log of a header whose log GUID is not zero; None when nothing is to replay."""
    where = f"log at offset {log_offset} ({log_length} bytes)"
    if log_length == 0:
        return None
    if log_offset % MiB or log_length % MiB or log_offset < MiB:
        raise FormatError(name, f"{where}: offset and length must be whole MiB past the first",
                          "the header is damaged")
    if log_length > MAX_LOG_LENGTH:
        raise FormatError(name, f"{where}: longer than {MAX_LOG_LENGTH // MiB} MiB",
                          "the header is damaged")
    if log_offset + log_length > file_size:
        raise FormatError(name, f"{where}: ends past the end of the file ({file_size} bytes)",
                          "the file is truncated")
    entries = find_active_sequence(read_at(log_offset, log_length), log_guid)
    if not entries:
        return None
    head = entries[-1]
    if head.flushed_file_offset > file_size:
        raise FormatError(
            name, f"log entry {head.sequence} says the file was at least "
            f"{head.flushed_file_offset} bytes when it was written, but it is {file_size}",
            "the file was truncated after a crash; restore it from a copy")
    return LogReplay(entries, max(file_size, head.last_file_offset))
