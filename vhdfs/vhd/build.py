"""The bytes of a new, empty VHD file: fixed, dynamic or differencing.

Layout of a new dynamic or differencing disk:
  0      footer copy (512 bytes)
  512    dynamic header (1024 bytes)
  1536   parent locator data (differencing only: W2ru, W2ku, MacX; 1 KiB or more each)
  ...    BAT, padded with 0xFF to a whole sector
  ...    blocks, appended on first write with their data 4 KiB aligned (vhdfs.vhd.layer)
  end    footer
A fixed disk is its data (a sparse file of zeros) and the footer. vhdfs.create writes these
under a temporary name and renames them into place; vhdfs.convert and set-parent use the
same pieces.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from vhdfs.errors import UsageError
from vhdfs.image import SECTOR
from vhdfs.quoting import escape
from vhdfs.vhd.dynheader import (
    HEADER_SIZE,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    DynamicHeader,
    ParentLocator,
)
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer
from vhdfs.vhd.rules import MAX_BAT_ENTRIES, is_block_size, needed_entries

DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
# The VHD specification's limit for dynamic and differencing disks.
MAX_SPARSE_SIZE = 2040 * (1 << 30)
MAX_FIXED_SIZE = 64 * (1 << 40)
LOCATOR_MIN_SPACE = 1024


@dataclass(frozen=True)
class ParentInfo:
    """What a new differencing child records about its parent."""

    path: Path | None  # where a local parent is now (absolute); None for a blob
    unique_id: bytes
    size: int
    timestamp: int  # VHD time of the parent's last modification (advisory)
    block_size: int = 0
    url: str = ""  # a parent in blob storage: its URL, never with a query (a SAS)

    @property
    def name(self) -> str:
        """The parent's file name (the header's parent name)."""
        if self.path is not None:
            return self.path.name
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def shown(self) -> str:
        return str(self.path) if self.path is not None else self.url


def check_size(size: int, disk_type: DiskType) -> None:
    if size <= 0:
        raise UsageError(f"disk size must be positive, got {size}")
    if size % SECTOR:
        up = -(-size // SECTOR) * SECTOR
        raise UsageError(f"disk size {size} is not a multiple of 512 bytes; use {up}")
    limit = MAX_FIXED_SIZE if disk_type == DiskType.FIXED else MAX_SPARSE_SIZE
    if size > limit:
        raise UsageError(f"disk size {size} exceeds the VHD limit of {limit} bytes for "
                         f"{disk_type.name.lower()} disks")


def check_block_size(block_size: int, size: int | None = None) -> None:
    """The reader's rules (vhdfs.vhd.rules) for a new file: never write what it refuses."""
    if not is_block_size(block_size):
        raise UsageError(f"block size {block_size} must be a power of two from 512 bytes to "
                         "256 MiB (2M is the usual choice, 512K is also common)")
    if size is not None and needed_entries(size, block_size) > MAX_BAT_ENTRIES:
        # Readers (ours included) refuse tables this large: never write one.
        smallest = 1 << max(9, (-(-size // MAX_BAT_ENTRIES) - 1).bit_length())
        raise UsageError(f"a disk of {size} bytes in {block_size}-byte blocks needs more than "
                         f"{MAX_BAT_ENTRIES} BAT entries; use --block-size {smallest} or larger")


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def fixed_footer(size: int, unique_id: bytes | None = None) -> Footer:
    return Footer.new(DiskType.FIXED, size, unique_id=unique_id)


def write_fixed(path: Path, size: int) -> Footer:
    """A fixed disk of zeros: a sparse file of `size` bytes and the footer."""
    footer = fixed_footer(size)
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(footer.build())
    return footer


def parent_locators(child_folder: Path, parent: Path) -> list[tuple[bytes, bytes]]:
    """W2ru (relative), W2ku (absolute) and MacX (file URL) for a child in `child_folder`."""
    parent_abs = parent.resolve()
    require_text_path(parent_abs)
    rel = os.path.relpath(parent_abs, child_folder.resolve())
    rel_win = rel.replace("/", "\\")
    if not rel_win.startswith(".."):
        rel_win = ".\\" + rel_win
    return [
        (PLATFORM_W2RU, rel_win.encode("utf-16-le")),
        (PLATFORM_W2KU, str(parent_abs).encode("utf-16-le")),
        (PLATFORM_MACX, ("file://" + urllib.parse.quote(str(parent_abs))).encode("utf-8")),
    ]


def require_text_path(path: Path) -> None:
    """Refuse a parent path that is not valid UTF-8: locators and the parent name hold
    Unicode text (UTF-16), so such a path cannot be recorded as it is, and a guessed
    spelling would make the child find nothing (or another file)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{escape(text, backslash=False)}: the parent's path is not valid UTF-8 "
                         "(shown with \\ooo for its raw bytes), and a VHD records its parent's "
                         "path as Unicode text; rename the parent (or its folder) to a UTF-8 "
                         "name and link again") from None


def url_locators(url: str) -> list[tuple[bytes, bytes]]:
    """The one locator of a parent in blob storage: MacX, its URL (without query) as UTF-8.

    Windows' locators (W2ru, W2ku) hold file paths and are left out; vhdfs follows the URL
    only to the account the environment holds credentials for (vhdfs.resolve)."""
    if "?" in url or "#" in url:
        raise ValueError("a parent URL is recorded without query or fragment")
    return [(PLATFORM_MACX, url.encode("utf-8"))]


def sparse_layout(size: int, block_size: int, disk_type: DiskType,
                  parent: ParentInfo | None = None, locators: list[tuple[bytes, bytes]] = ()
                  ) -> tuple[Footer, DynamicHeader, list[tuple[int, bytes]], int]:
    """Footer, header, [(offset, locator data)] and the trailing footer offset of a new
    dynamic or differencing disk with an empty BAT."""
    entries = -(-size // block_size)
    footer = Footer.new(disk_type, size, data_offset=FOOTER_SIZE)
    header = DynamicHeader(table_offset=0, max_table_entries=entries, block_size=block_size)
    position = FOOTER_SIZE + HEADER_SIZE
    placed: list[tuple[int, bytes]] = []
    for index, (code, data) in enumerate(locators):
        space = max(_round_up(len(data), SECTOR), LOCATOR_MIN_SPACE)
        header.locators[index] = ParentLocator(code, space, len(data), position)
        placed.append((position, data))
        position += space
    if parent is not None:
        header.parent_unique_id = parent.unique_id
        header.parent_timestamp = parent.timestamp
        header.parent_name_raw = DynamicHeader.encode_parent_name(parent.name)
    header.table_offset = position
    footer_at = position + _round_up(entries * 4, SECTOR)
    return footer, header, placed, footer_at


def write_sparse(path: Path, size: int, block_size: int, disk_type: DiskType,
                 parent: ParentInfo | None = None) -> Footer:
    locators: list[tuple[bytes, bytes]] = []
    if parent is not None:
        locators = parent_locators(path.parent, parent.path) if parent.path is not None \
            else url_locators(parent.url)
    footer, header, placed, footer_at = sparse_layout(size, block_size, disk_type, parent,
                                                     locators)
    table = header.table_offset
    with open(path, "r+b") as handle:
        handle.truncate(0)
        handle.write(footer.build())
        handle.write(header.build())
        for offset, data in placed:
            handle.seek(offset)
            handle.write(data)
        handle.seek(table)
        handle.write(b"\xff" * (footer_at - table))
        handle.write(footer.build())
    return footer
