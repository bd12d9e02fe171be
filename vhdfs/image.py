"""What every image layer speaks, whatever its format: `ImageLayer`, the runs of its map and
its locators.

A layer's `map(offset, size)` answers with `Run`s: the bytes this file holds (HERE, at a file
offset), those it leaves to the layer below (BELOW: differencing disks only) and those that
read as zeros (ZERO). The chain, convert, commit, upload and the views ask these questions of
VHD, VHDX and raw layers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Protocol, runtime_checkable

from vhdfs.sources.base import Source

# The unit of every map: layers hold, map and write whole 512-byte sectors.
SECTOR = 512


class DiskType(IntEnum):
    """What kind of disk a layer is. The numbers are the VHD footer's disk type field
    (footer byte 60); a VHDX says the same with its file parameters and parent locator."""

    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


class RunKind(Enum):
    HERE = "here"  # this file holds the bytes, at file_offset
    BELOW = "below"  # the layer below provides them (differencing disks)
    ZERO = "zero"  # zeros, with nothing stored


@dataclass(frozen=True, slots=True)
class Run:
    kind: RunKind
    offset: int  # virtual disk offset
    length: int
    file_offset: int = -1  # for HERE runs


@dataclass(frozen=True, slots=True)
class LocatorEntry:
    """One parent locator, as text: its index, its code (VHD: W2ru, W2ku, MacX ...; VHDX: the
    key, relative_path ...) and the path or URL it holds."""

    index: int
    code: str
    text: str


@runtime_checkable
class ImageLayer(Protocol):
    """One image file over one source, whatever its format: what the chain, the operations
    and the views may ask of a layer, and all they may ask (they never probe for more).

    VHD (`vhdfs.vhd.layer.Layer`), VHDX (`vhdfs.vhdx.layer.VhdxLayer`) and raw
    (`vhdfs.raw.RawLayer`) layers implement it, over local files and page blobs alike.
    A layer knows nothing of its parent: `map` answers BELOW where the layer below speaks.
    """

    name: str  # the file name or blob URL it was opened by
    source: Source
    writable: bool
    warnings: list[str]  # what opening it found and read past, one line each
    # Blocks that cannot be read (block index -> why): reading one fails, writing is refused.
    bad_blocks: dict[int, str]

    @property
    def size(self) -> int:
        """The virtual disk's size in bytes (a multiple of 512)."""

    @property
    def block_size(self) -> int:
        """Bytes per block of the block table; 0 where the format has none (fixed, raw)."""

    @property
    def sector_size(self) -> int:
        """Writes are whole multiples of this, aligned to it (512, or a 4 KiB logical sector
        of a VHDX differencing disk)."""

    @property
    def logical_sector_size(self) -> int:
        """The sector size the guest sees (VHD and raw: 512)."""

    @property
    def physical_sector_size(self) -> int | None:
        """The physical sector size the format records for the guest; None where it records
        none (VHD, raw)."""

    @property
    def image_format(self) -> str:
        """"VHD", "VHDX" or "raw": what a parent must match and what messages name."""

    @property
    def disk_type(self) -> DiskType | None:
        """Fixed, dynamic or differencing; None for a raw image."""

    @property
    def is_differencing(self) -> bool: ...

    @property
    def unique_id(self) -> bytes:
        """The id a child's parent link names (VHD: footer unique id; VHDX: DataWriteGuid);
        b"" for a raw image."""

    @property
    def parent_id(self) -> bytes | None:
        """The id of the parent it was made over; None unless differencing."""

    @property
    def parent_ids(self) -> tuple[bytes, ...]:
        """Every id a parent may have to be this layer's parent (VHDX records two
        linkages); () unless differencing."""

    @property
    def parent_name(self) -> str:
        """The parent's name as recorded ("" where the format records none)."""

    @property
    def locator_entries(self) -> list[LocatorEntry]:
        """The parent locators that name a path or URL, in the order they are tried."""

    @property
    def creation_time(self) -> int | None:
        """When the file was made, in seconds since 2000-01-01 UTC (the VHD footer's time
        stamp); None where the format keeps none (VHDX, raw)."""

    @property
    def virtual_disk_id(self) -> bytes | None:
        """The id every checkpoint of one virtual disk shares (VHDX VirtualDiskId); None
        where the format has none."""

    @property
    def commit_mark(self) -> bytes | None:
        """The unique id of the child an unfinished `vhdfs commit` is copying into this
        layer, as its file marks it (vhdfs.maintain.journals); None when unmarked."""

    def format_id(self, raw: bytes) -> str:
        """An id (unique id, parent id) as this format prints it (VHDX: Windows GUID text)."""

    def describe(self) -> dict[str, Any]:
        """What `vhdfs info` shows of this layer: its format's own facts (path, disk_type,
        virtual_size first); the chain adds where its parent was found."""

    def map(self, offset: int, length: int) -> list[Run]:
        """Runs covering [offset, offset + length) of the virtual disk, in order."""

    def read_into(self, file_offset: int, view: memoryview) -> None:
        """Fill `view` with stored bytes at `file_offset` (a HERE run's file offset)."""

    def read_data(self, file_offset: int, length: int) -> bytes:
        """`length` stored bytes at `file_offset`."""

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write whole sectors (see `sector_size`) at an aligned offset of the virtual disk;
        RefusedError unless the layer was opened writable."""

    def flush(self) -> None:
        """Make every completed write durable (nothing to do when read-only)."""

    def close(self) -> None:
        """Flush, then close the source."""
