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

from construct import Container

from vhdfs.errors import FormatError
from vhdfs.sources.base import Source
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import rules

_FIELDS = ("sequence_number", "file_write_guid", "data_write_guid", "log_guid", "log_version",
           "version", "log_length", "log_offset")


class Headers:
    """The current header of a file and the slot (1 or 2) it was read from."""

    def __init__(self, current: Any, number: int) -> None:
        self.current = current
        self.number = number

    @classmethod
    def read(cls, source: Source, warn: Callable[[str], None]) -> Headers:
        """The current header (vhdfs.vhdx.rules.current_slot); FormatError when neither is
        valid or its log version is unknown, a warning when one of the two is damaged."""
        name = source.name
        slots = rules.read_header_slots(source.read_at)
        current = rules.current_slot(slots)
        if current is None:
            problem = rules.both_headers_damaged(slots)
            raise FormatError(name, problem.what, problem.fix)
        damaged = [slot.problem for slot in slots if slot.problem]
        if damaged:
            warn(f"{name}: {damaged[0]}; using header {current.number} (sequence "
                 f"{current.header.sequence_number})")
        if (problem := rules.log_version_problem(current)) is not None:
            raise FormatError(name, problem.what, problem.fix)
        return cls(current.header, current.number)

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
