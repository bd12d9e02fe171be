"""What every image layer speaks, whatever its format: the runs of its map and its locators.

A layer's `map(offset, size)` answers with `Run`s: the bytes this file holds (HERE, at a file
offset), those it leaves to the layer below (BELOW: differencing disks only) and those that
read as zeros (ZERO). The chain, convert, commit, upload and the views ask these questions of
VHD, VHDX and raw layers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

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
