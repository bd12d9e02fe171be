"""A raw disk image as the base layer of a chain (for importing raw images into VHDs).

Holes of a sparse file map to ZERO runs (the source's `data_ranges`: SEEK_DATA / SEEK_HOLE),
so nothing is read for them. A raw image is only ever read.
"""

from __future__ import annotations

import errno
from typing import Any

from vhdfs.errors import ImageIOError, RefusedError
from vhdfs.image import SECTOR, DiskType, LocatorEntry, Run, RunKind
from vhdfs.sources.base import Source


class RawLayer:
    """A raw image (a `vhdfs.image.ImageLayer`): no blocks, no ids, no parent."""

    image_format = "raw"
    disk_type: DiskType | None = None
    is_differencing = False
    block_size = 0
    sector_size = SECTOR
    logical_sector_size = SECTOR
    physical_sector_size = None
    unique_id = b""
    parent_id = None
    parent_ids: tuple[bytes, ...] = ()
    parent_name = ""
    creation_time = None
    virtual_disk_id = None
    commit_mark = None

    def __init__(self, source: Source) -> None:
        self.source = source
        self.name = source.name
        self.writable = False
        self.warnings: list[str] = []
        self.bad_blocks: dict[int, str] = {}
        self.locator_entries: list[LocatorEntry] = []
        self.file_size = source.size()
        # A VHD holds whole sectors: an image of odd size reads as zero-padded to the next one.
        self.size = -(-self.file_size // SECTOR) * SECTOR

    @staticmethod
    def format_id(raw: bytes) -> str:
        return raw.hex()

    def describe(self) -> dict[str, Any]:
        return {"path": self.name, "disk_type": "raw", "virtual_size": self.size}

    def map(self, offset: int, length: int) -> list[Run]:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageIOError(f"{self.name}: range {offset}+{length} is outside the image of "
                               f"{self.size} bytes", errno.EINVAL)
        end = offset + length
        data_end = min(end, self.file_size)
        runs: list[Run] = []
        pos = offset
        for lo, hi in self.source.data_ranges(offset, data_end):
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

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise RefusedError(f"{self.name}: a raw image is only read; convert it to write into it")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.source.close()
