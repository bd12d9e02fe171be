"""The two VHDX headers: which one is current, and how a new one replaces the other.

A header cannot be changed through the log (it says where the log is), so the file keeps
two copies at 64 KiB and 128 KiB ([MS-VHDX] 2.2.2). The current one is the valid one
(signature, CRC-32C, version 1) with the higher sequence number. An update writes the
other copy with the sequence number plus one and flushes it: a crash during the write
leaves the old current header valid, so the file always has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from construct import ChecksumError as ConstructChecksumError
from construct import ConstructError, Container

from vhdfs.errors import FormatError
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt

_FIELDS = ("sequence_number", "file_write_guid", "data_write_guid", "log_guid", "log_version",
           "version", "log_length", "log_offset")


class Headers:
    """The current header of a file and the slot (1 or 2) it was read from."""

    def __init__(self, current: Any, number: int) -> None:
        self.current = current
        self.number = number

    @classmethod
    def read(cls, source: Source, warn: Callable[[str], None]) -> Headers:
        name = source.name
        valid: list[tuple[Any, int]] = []
        problems: list[str] = []
        for number, offset in enumerate(fmt.HEADER_OFFSETS, start=1):
            raw = source.read_at(offset, fmt.HEADER_SIZE)
            try:
                header = fmt.HEADER.parse(raw).tail.value
            except ConstructChecksumError:
                problems.append(f"header {number} at offset {offset} fails its CRC-32C check")
                continue
            except ConstructError:
                problems.append(f"header {number} at offset {offset} has no 'head' signature")
                continue
            if header.version != 1:
                problems.append(f"header {number} at offset {offset} has version "
                                f"{header.version} (expected 1)")
                continue
            valid.append((header, number))
        if not valid:
            raise FormatError(name, "both VHDX headers are damaged (" + "; ".join(problems)
                              + ")", "the file cannot be read; restore it from a copy")
        header, number = max(valid, key=lambda item: item[0].sequence_number)
        if problems:
            warn(f"{name}: {problems[0]}; using header {number} (sequence "
                 f"{header.sequence_number})")
        if header.log_version != 0:
            raise FormatError(name, f"header {number}: log version {header.log_version} "
                              "is not supported (expected 0)", "")
        return cls(header, number)

    def update(self, source: Source, **changes: Any) -> None:
        """Write a new current header into the other slot (and flush it): the current one's
        fields with `changes`, its sequence number plus one."""
        fields = {key: self.current[key] for key in _FIELDS}
        fields.update(changes)
        fields["sequence_number"] = self.current.sequence_number + 1
        target = 2 if self.number == 1 else 1
        source.write_at(fmt.HEADER_OFFSETS[target - 1], fmt.build_header(fields))
        source.sync()
        self.current, self.number = Container(fields), target
