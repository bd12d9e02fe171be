"""Which files a mount shows, and where each one's bytes come from. No FUSE here.

Every file is a window on the flat disk (`start`, `length`), optionally followed by fixed
bytes (`tail`): `disk.raw` is the whole disk, `disk.vhd` the whole disk plus a fixed-VHD
footer, `p1`, `p2`, ... the partitions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vhdfs.chain import Chain
from vhdfs.errors import VhdfsError
from vhdfs.partitions import list_partitions
from vhdfs.vhd.build import fixed_footer

log = logging.getLogger("vhdfs")

FIRST_FILE_INODE = 2  # 1 is the root directory


@dataclass(frozen=True)
class DiskFile:
    name: str
    inode: int
    start: int  # offset of the file's first byte on the flat disk
    length: int  # bytes taken from the disk
    writable: bool  # writes are accepted (only on a --rw mount)
    tail: bytes = b""  # fixed bytes after the disk window (the footer of disk.vhd)
    description: str = ""

    @property
    def size(self) -> int:
        return self.length + len(self.tail)


def build_tree(chain: Chain, *, writable: bool, footer_id: bytes | None = None) -> list[DiskFile]:
    """The files of a mount of `chain`. A partition table that cannot be read is a warning:
    the mount then shows the whole disk only."""
    footer = fixed_footer(chain.size, unique_id=footer_id).build()
    files = [
        DiskFile("disk.raw", FIRST_FILE_INODE, 0, chain.size, writable, description="the flat disk"),
        DiskFile("disk.vhd", FIRST_FILE_INODE + 1, 0, chain.size, False, footer,
                 description="the flat disk as a fixed VHD (read-only)"),
    ]
    try:
        partitions = list_partitions(chain)
    except VhdfsError as exc:
        log.warning("%s; no partition files are shown", exc)
        partitions = []
    for part in partitions:
        if part.start >= chain.size:
            log.warning("%s: partition %d starts at byte %d, past the end of the disk; not shown",
                        chain.top.name, part.number, part.start)
            continue
        length = min(part.length, chain.size - part.start)
        files.append(DiskFile(f"p{part.number}", FIRST_FILE_INODE + len(files), part.start, length,
                              writable, description=f"partition {part.number} ({part.type_name})"))
    return files
