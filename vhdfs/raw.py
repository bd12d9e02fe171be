"""A raw disk image as the base layer of a chain (for importing raw images into VHDs).

Holes of a sparse file map to ZERO runs (SEEK_DATA / SEEK_HOLE), so nothing is read for them.
"""

from __future__ import annotations

import errno

from vhdfs.errors import ImageIOError
from vhdfs.image import SECTOR, Run, RunKind
from vhdfs.sources.base import Source


class RawLayer:
    is_differencing = False
    parent_id = None
    parent_name = ""
    header = None
    block_size = 0
    bad_blocks: dict[int, str] = {}
    disk_type = None

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.writable = False
        self.warnings: list[str] = []
        self.file_size = source.size()
        # A VHD holds whole sectors: an image of odd size reads as zero-padded to the next one.
        self.size = -(-self.file_size // SECTOR) * SECTOR
        self.unique_id = b""
        self.locator_entries: list = []

    def map(self, offset: int, length: int) -> list[Run]:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: range {offset}+{length} is outside the image of "
                               f"{self.size} bytes", errno.EINVAL)
        end = offset + length
        ranges = getattr(self.source, "data_ranges", None)
        data_end = min(end, self.file_size)
        data = ranges(offset, data_end) if ranges else [(offset, data_end)]
        runs: list[Run] = []
        pos = offset
        for lo, hi in data:
            lo, hi = max(lo, offset), min(hi, end)
            if lo > pos:
                runs.append(Run(RunKind.ZERO, pos, lo - pos))
            if hi > lo:
                runs.append(Run(RunKind.HERE, lo, hi - lo, lo))
            pos = max(pos, hi)
        if pos < end:
            runs.append(Run(RunKind.ZERO, pos, end - pos))
        return runs

    def read_data(self, file_offset: int, length: int) -> bytes:
        return self.source.read_at(file_offset, length)

    def read_into(self, file_offset: int, view: memoryview) -> None:
        self.source.read_into(file_offset, view)

    def allocated_blocks(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.source.close()
