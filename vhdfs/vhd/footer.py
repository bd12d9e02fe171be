"""The 512-byte VHD footer (hard disk footer), its geometry and the virtual-size rule."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace

from construct import (
    Bytes,
    Const,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
)

from vhdfs.image import DiskType
from vhdfs.vhd.checksum import ChecksummedStruct
from vhdfs.vhd.timestamp import vhd_now

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES_RESERVED = 0x2  # always set
VERSION_1_0 = 0x00010000
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
CREATOR_APP = b"vhdf"
CREATOR_OS_WI2K = b"Wi2k"
MAX_GEOMETRY = (65535, 16, 255)


_FOOTER_HEAD = Struct(
    "cookie" / Const(COOKIE),
    "features" / Int32ub,
    "version" / Int32ub,
    "data_offset" / Int64ub,
    "timestamp" / Int32ub,
    "creator_app" / Bytes(4),
    "creator_version" / Int32ub,
    "creator_os" / Bytes(4),
    "original_size" / Int64ub,
    "current_size" / Int64ub,
    "cylinders" / Int16ub,
    "heads" / Int8ub,
    "sectors_per_track" / Int8ub,
    "disk_type" / Int32ub,
)
_FOOTER_TAIL = Struct(
    "unique_id" / Bytes(16),
    "saved_state" / Int8ub,
    # Reserved, but not always zero: tapdisk keeps a hidden flag at byte 85. Kept verbatim.
    "reserved" / Bytes(427),
)
FOOTER_STRUCT = ChecksummedStruct(
    "footer", FOOTER_SIZE, _FOOTER_HEAD.sizeof(), COOKIE, head=_FOOTER_HEAD, tail=_FOOTER_TAIL,
    cookie_fix="this is not a VHD file, or its footer is damaged (vhdfs check --repair)",
    damage_fix="the footer is damaged; vhdfs check --repair can restore it")

# vhdfs commit marks a parent it copies into in the last 32 reserved bytes (footer bytes
# 480-511, where no other writer puts anything): this magic, a version and the child's unique
# id. vhdfs.maintain.journals sets and clears the mark; every reader reports it.
MARKER_MAGIC = b"vhdfs-commit"
MARKER_VERSION = b"\0\0\0\x01"
MARKER_FOOTER_BYTE = 480
MARK_LENGTH = len(MARKER_MAGIC) + len(MARKER_VERSION) + 16
_MARK_INDEX = MARKER_FOOTER_BYTE - FOOTER_STRUCT.offset("reserved")  # into Footer.reserved
MARK_SLICE = slice(_MARK_INDEX, _MARK_INDEX + MARK_LENGTH)


def chs_geometry(total_sectors: int) -> tuple[int, int, int]:
    """CHS geometry for a disk of `total_sectors`, by the algorithm in the VHD specification."""
    total = min(total_sectors, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_times_heads = total // spt
    else:
        spt = 17
        cyl_times_heads = total // spt
        heads = max((cyl_times_heads + 1023) // 1024, 4)
        if cyl_times_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_times_heads = total // spt
        if cyl_times_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_times_heads = total // spt
    return cyl_times_heads // heads, heads, spt


def footer_geometry(size: int) -> tuple[int, int, int]:
    """The CHS geometry a footer records for a disk of `size` bytes (create and resize)."""
    cylinders, heads, spt = chs_geometry(size // 512)
    if cylinders * heads * spt * 512 != size:
        # The geometry cannot express this size. As qemu-img does for exact sizes, write
        # the maximum geometry, which readers that size disks by CHS (qemu, for creators
        # it does not know) take to mean "use the current size"; Hyper-V and Azure use
        # the current size anyway.
        return MAX_GEOMETRY
    return cylinders, heads, spt


SIZE_RULES = ("auto", "current", "chs")


def format_unique_id(raw: bytes) -> str:
    """A unique id as text, its 16 bytes in stored order (never re-encoded for comparing)."""
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


@dataclass
class Footer:
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    unique_id: bytes
    saved_state: int = 0
    reserved: bytes = field(default=bytes(427), repr=False)
    checksum: int = 0

    @classmethod
    def new(cls, disk_type: DiskType, size: int, data_offset: int = NO_DATA_OFFSET,
            unique_id: bytes | None = None) -> Footer:
        cylinders, heads, spt = footer_geometry(size)
        return cls(
            features=FEATURES_RESERVED, version=VERSION_1_0, data_offset=data_offset,
            timestamp=vhd_now(), creator_app=CREATOR_APP, creator_version=0x00010000,
            creator_os=CREATOR_OS_WI2K, original_size=size, current_size=size,
            cylinders=cylinders, heads=heads, sectors_per_track=spt, disk_type=int(disk_type),
            unique_id=unique_id or uuid.uuid4().bytes,
        )

    @classmethod
    def parse(cls, data: bytes, source: str, offset: int, *, verify: bool = True) -> Footer:
        """Parse 512 bytes; raise FormatError (ChecksumError for a bad checksum only)."""
        parsed = FOOTER_STRUCT.parse(data, source, offset, verify=verify)
        head, tail = parsed.head.value, parsed.tail.value
        return cls(
            features=head.features, version=head.version, data_offset=head.data_offset,
            timestamp=head.timestamp, creator_app=head.creator_app,
            creator_version=head.creator_version, creator_os=head.creator_os,
            original_size=head.original_size, current_size=head.current_size,
            cylinders=head.cylinders, heads=head.heads, sectors_per_track=head.sectors_per_track,
            disk_type=head.disk_type, unique_id=tail.unique_id, saved_state=tail.saved_state,
            reserved=tail.reserved, checksum=parsed.checksum,
        )

    def build(self) -> bytes:
        fields = asdict(self)
        head = {sub.name: fields[sub.name] for sub in _FOOTER_HEAD.subcons if sub.name != "cookie"}
        head["cookie"] = COOKIE
        tail = {"unique_id": self.unique_id, "saved_state": self.saved_state,
                "reserved": self.reserved}
        return FOOTER_STRUCT.build(head, tail)

    def copy(self, **changes: object) -> Footer:
        return replace(self, **changes)

    def resized(self, size: int) -> Footer:
        """This footer for a disk of `size` bytes: the current size and, as create writes
        it, the geometry (the original size stays what the disk was created with)."""
        cylinders, heads, spt = footer_geometry(size)
        return replace(self, current_size=size, cylinders=cylinders, heads=heads,
                       sectors_per_track=spt)

    @property
    def commit_mark(self) -> bytes | None:
        """The unique id of the child whose commit into this file is unfinished, if marked."""
        area = self.reserved[MARK_SLICE]
        return bytes(area[-16:]) if area.startswith(MARKER_MAGIC) else None

    @property
    def chs_size(self) -> int:
        return self.cylinders * self.heads * self.sectors_per_track * 512

    def uses_chs_size(self) -> bool:
        """qemu's rule, which follows the writers: Virtual PC and old qemu size disks by
        geometry; Hyper-V, Disk2vhd, XenServer, Azure and others by current size; the
        maximum geometry means the geometry cannot express the size."""
        geometry = (self.cylinders, self.heads, self.sectors_per_track)
        return self.creator_app in (b"vpc ", b"qemu") and geometry != MAX_GEOMETRY

    def virtual_size(self, rule: str = "auto") -> int:
        if rule == "current" or (rule == "auto" and not self.uses_chs_size()):
            return self.current_size
        return self.chs_size

    @property
    def creator(self) -> str:
        app = self.creator_app.rstrip(b"\0 ").decode("latin-1")
        major, minor = self.creator_version >> 16, self.creator_version & 0xFFFF
        os_name = self.creator_os.rstrip(b"\0 ").decode("latin-1")
        return f"{app} {major}.{minor} ({os_name})"
