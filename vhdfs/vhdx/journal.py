"""Writing a VHDX file's metadata through its log ([MS-VHDX] 2.3), and the rules of a write
session (which GUIDs change when, how the log is emptied).

Every change to the BAT or to a sector bitmap is a 4 KiB sector that goes through the log.
One commit (a layer's flush):
  1. flush the file: the data the new metadata points at, the file size, and the in-place
     writes of the previous commit are durable before an entry mentions them;
  2. the first commit of a session gives the log a new GUID (a header update), so entries
     of earlier sessions can never be replayed again;
  3. write one entry (the next sequence number, CRC-32C over all of it) at the start of the
     log and flush it: from here a replay (ours, qemu's, Hyper-V's) brings the sectors
     back whatever happens to their places;
  4. write the sectors to their places. They are flushed by step 1 of the next commit, or
     by the close; until then the entry still holds them.
Entries always start at log offset 0 and name themselves as the tail: when one is written,
every earlier entry's writes are durable in place (step 1), so no older entry is needed
any more. A crash while an entry is written leaves either no valid entry (nothing to
replay; the file is as the previous commit left it) or the previous entry whole (replaying
it rewrites what is already there). qemu also writes each entry at offset 0. A commit
larger than the log is split into entries written, flushed and applied one after another,
in the order the caller gives (the layer orders them so any prefix is a consistent file).

A clean close flushes the file and writes the header with a zero log GUID: the log is
empty and the file opens without a replay anywhere.

Session rules ([MS-VHDX] 2.2.2): the first header update of a session gives the file a new
FileWriteGuid, before anything else changes (log replay included), and is made twice so
both header copies are current; the first change to what the virtual disk reads gives it a
new DataWriteGuid (what differencing children record as parent_linkage: writing to a
parent with children makes them stale, as Hyper-V does).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from vhdfs.errors import FormatError
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.log import LogReplay

MiB = fmt.MiB
ZERO_CHUNK = 4 * MiB  # zero ranges of a replay are written in pieces of this size


def new_guid() -> bytes:
    return uuid.uuid4().bytes_le


def max_entry_sectors(log_length: int) -> int:
    """Most 4 KiB sectors one entry can carry in a log of `log_length` bytes."""
    room = log_length // fmt.LOG_SECTOR
    count = room
    while count > 0 and fmt.descriptor_sectors(count) + count > room:
        count -= 1
    return count


def _runs(sectors: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Adjacent sectors joined into one write each (order kept)."""
    out: list[tuple[int, bytearray]] = []
    for offset, data in sectors:
        if out and out[-1][0] + len(out[-1][1]) == offset:
            out[-1][1].extend(data)
        else:
            out.append((offset, bytearray(data)))
    return [(offset, bytes(data)) for offset, data in out]


class Journal:
    """The header updates and the metadata log of one VHDX file opened for writing."""

    def __init__(self, source: Source, headers: Headers) -> None:
        self.source = source
        self.name = source.name
        self.headers = headers
        self._lock = threading.Lock()
        self._file_guid_changed = False
        self._data_guid_changed = False
        self._log_started = False
        self._sequence = 0
        hdr = headers.current
        self.log_offset, self.log_length = hdr.log_offset, hdr.log_length
        self._check_log_location()
        self.max_sectors = max_entry_sectors(self.log_length)

    def _check_log_location(self) -> None:
        where = (f"header {self.headers.number}: log at offset {self.log_offset} "
                 f"({self.log_length} bytes)")
        fix = ("the header is damaged; refusing to write; copy what reads with vhdfs convert "
               f"{self.name} out.vhdx --to vhdx")
        if self.log_length < MiB or self.log_length % MiB:
            raise FormatError(self.name, f"{where}: a log must be whole MiB and at least 1 MiB "
                              "long to carry the metadata changes of a write", fix)
        if self.log_offset % MiB or self.log_offset < fmt.HEADER_SECTION_SIZE:
            raise FormatError(self.name, f"{where}: a log must start on a whole MiB past the "
                              "first", fix)
        if self.log_offset + self.log_length > self.source.size():
            raise FormatError(self.name, f"{where}: ends past the end of the file "
                              f"({self.source.size()} bytes)", fix)

    # ---------------------------------------------------------------- headers
    @property
    def header(self) -> Any:
        return self.headers.current

    def _update(self, **changes: Any) -> None:
        if self._file_guid_changed:
            self.headers.update(self.source, **changes)
            return
        self.headers.update(self.source, file_write_guid=new_guid(), **changes)
        self.headers.update(self.source)  # the second copy: both current
        self._file_guid_changed = True

    def begin_data(self, guid: bytes | None = None) -> None:
        """Before the first write of virtual disk data in this session: a new DataWriteGuid,
        or `guid` when the caller chose it beforehand (commit records it, so a resumed run
        keeps it: a header that already holds it is not written again)."""
        with self._lock:
            if self._data_guid_changed:
                return
            if guid is None or bytes(self.header.data_write_guid) != guid:
                self._update(data_write_guid=guid or new_guid())
            elif not self._file_guid_changed:
                self._update()  # the FileWriteGuid still changes before the first write
            self._data_guid_changed = True

    # ---------------------------------------------------------------- the log
    def commit(self, sectors: list[tuple[int, bytes]], *, atomic: bool = False) -> None:
        """Make `sectors` ((4 KiB-aligned file offset, 4 KiB), in the order they may reach
        the file) durable through the log, then write them in place. `atomic`: in one entry,
        so a crash leaves all of them or none (refused when they do not fit)."""
        if not sectors:
            return
        if atomic and len(sectors) > self.max_sectors:
            raise FormatError(self.name, f"a change of {len(sectors)} metadata sectors does not "
                              f"fit in one entry of its {self.log_length}-byte log "
                              f"({self.max_sectors} sectors)", "nothing was written")
        with self._lock:
            self.source.sync()
            if not self._log_started:
                self._update(log_guid=new_guid())
                self._log_started = True
                self._sequence = 0
            for start in range(0, len(sectors), self.max_sectors):
                if start:
                    self.source.sync()  # the previous entry's writes in place before it goes
                batch = sectors[start:start + self.max_sectors]
                self._sequence += 1
                self.source.write_at(self.log_offset, self._entry(batch))
                self.source.sync()
                for offset, data in _runs(batch):
                    self.source.write_at(offset, data)

    def _entry(self, batch: list[tuple[int, bytes]]) -> bytes:
        seq = self._sequence
        descriptors, data_sectors = [], []
        for offset, data in batch:
            if offset % fmt.LOG_SECTOR or len(data) != fmt.LOG_SECTOR:
                raise ValueError(f"log writes are whole 4 KiB sectors (got {len(data)} at {offset})")
            descriptors.append(dict(signature=fmt.DATA_DESCRIPTOR, trailing_bytes=data[-4:],
                                    leading_bytes=data[:8], file_offset=offset,
                                    sequence_number=seq))
            data_sectors.append(dict(sequence_high=seq >> 32, data=data[8:-4],
                                     sequence_low=seq & 0xFFFFFFFF))
        size = self.source.size()  # durable: the file was flushed since it last grew
        return fmt.build_log_entry(dict(
            tail=0, sequence_number=seq, reserved=0, log_guid=self.header.log_guid,
            flushed_file_offset=size, last_file_offset=size,
            descriptors=descriptors, data_sectors=data_sectors))

    def replay_into_file(self, replay: LogReplay) -> None:
        """Make a replay found at open permanent: the writes in place, the file as long as
        the log says, then an empty log."""
        with self._lock:
            self._update()  # a new FileWriteGuid before the replay changes anything
            for start, end in replay.zeros:  # zero ranges first: LogReplay dropped the
                for at in range(start, end, ZERO_CHUNK):  # sectors they overwrite
                    self.source.write_at(at, bytes(min(ZERO_CHUNK, end - at)))
            for offset, data in _runs(sorted(replay.sectors.items())):
                self.source.write_at(offset, data)
            if self.source.size() < replay.file_size:
                self.source.truncate(replay.file_size)
            self.source.sync()
            self._update(log_guid=fmt.ZERO_GUID)
            self.headers.update(self.source)  # both copies: no stale one names the old log

    def close(self) -> None:
        """Empty the log when this session used it (or wrote to a file whose header named an
        empty log, which qemu would refuse to write): the file opens without a replay."""
        with self._lock:
            stale = self._file_guid_changed and self.header.log_guid != fmt.ZERO_GUID
            if not self._log_started and not stale:
                return  # nothing written, or nothing that left a log GUID behind
            self.source.sync()
            self._update(log_guid=fmt.ZERO_GUID)
            self.headers.update(self.source)  # both copies say the log is empty
            self._log_started = False
