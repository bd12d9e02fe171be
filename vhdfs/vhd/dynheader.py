"""The 1024-byte dynamic disk header and its eight parent locator entries."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from construct import Array, Bytes, Const, Int32ub, Int64ub, Struct

from vhdfs.quoting import printable
from vhdfs.vhd.checksum import ChecksummedStruct

HEADER_SIZE = 1024
COOKIE = b"cxsparse"
HEADER_VERSION = 0x00010000
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
LOCATOR_COUNT = 8
PARENT_NAME_BYTES = 512

PLATFORM_NONE = b"\0\0\0\0"
PLATFORM_W2RU = b"W2ru"  # relative Windows path, UTF-16LE
PLATFORM_W2KU = b"W2ku"  # absolute Windows path, UTF-16LE
PLATFORM_MACX = b"MacX"  # file:// URL, UTF-8
PLATFORM_MAC = b"Mac "  # Mac OS alias blob: not a path, ignored
PLATFORM_WI2R = b"Wi2r"  # deprecated relative path
PLATFORM_WI2K = b"Wi2k"  # deprecated absolute path

LOCATOR_STRUCT = Struct(
    "platform_code" / Bytes(4),
    "data_space" / Int32ub,
    "data_length" / Int32ub,
    "reserved" / Int32ub,
    "data_offset" / Int64ub,
)

_HEADER_HEAD = Struct(
    "cookie" / Const(COOKIE),
    "data_offset" / Int64ub,
    "table_offset" / Int64ub,
    "header_version" / Int32ub,
    "max_table_entries" / Int32ub,
    "block_size" / Int32ub,
)
_HEADER_TAIL = Struct(
    "parent_unique_id" / Bytes(16),
    "parent_timestamp" / Int32ub,
    "reserved1" / Int32ub,
    "parent_name" / Bytes(PARENT_NAME_BYTES),
    "locators" / Array(LOCATOR_COUNT, LOCATOR_STRUCT),
    "reserved2" / Bytes(256),
)
HEADER_STRUCT = ChecksummedStruct(
    "dynamic header", HEADER_SIZE, _HEADER_HEAD.sizeof(), COOKIE, head=_HEADER_HEAD,
    tail=_HEADER_TAIL,
    cookie_fix="the footer's data offset is wrong or the header is damaged",
    damage_fix="the header is damaged; vhdfs check --repair can fix it")


@dataclass
class ParentLocator:
    platform_code: bytes = PLATFORM_NONE
    data_space: int = 0
    data_length: int = 0
    data_offset: int = 0
    reserved: int = 0

    @property
    def is_empty(self) -> bool:
        return self.platform_code == PLATFORM_NONE or self.data_length == 0

    @property
    def space_bytes(self) -> int:
        """Room reserved for the locator data, in bytes.

        The specification says sectors, Windows and Virtual PC write bytes. As blktap decides:
        a value below 512 counts sectors, anything else bytes.
        """
        return self.data_space * 512 if self.data_space < 512 else self.data_space

    @property
    def code_text(self) -> str:
        return self.platform_code.decode("latin-1")

    def decode(self, data: bytes) -> str:
        """The path or URL text of this locator (undecodable bytes and control characters
        become U+FFFD)."""
        if self.platform_code in (PLATFORM_W2RU, PLATFORM_W2KU):
            text = data.decode("utf-16-le", errors="replace")
        else:
            text = data.decode("utf-8", errors="replace")
        return printable(text.rstrip("\0"))


@dataclass
class DynamicHeader:
    table_offset: int
    max_table_entries: int
    block_size: int
    parent_unique_id: bytes = bytes(16)
    parent_timestamp: int = 0
    parent_name_raw: bytes = bytes(PARENT_NAME_BYTES)
    locators: list[ParentLocator] = field(
        default_factory=lambda: [ParentLocator() for _ in range(LOCATOR_COUNT)])
    data_offset: int = NO_OFFSET
    header_version: int = HEADER_VERSION
    reserved1: int = 0
    reserved2: bytes = field(default=bytes(256), repr=False)
    checksum: int = 0

    @classmethod
    def parse(cls, data: bytes, source: str, offset: int, *, verify: bool = True) -> DynamicHeader:
        parsed = HEADER_STRUCT.parse(data, source, offset, verify=verify)
        head, tail = parsed.head.value, parsed.tail.value
        return cls(
            table_offset=head.table_offset, max_table_entries=head.max_table_entries,
            block_size=head.block_size, parent_unique_id=tail.parent_unique_id,
            parent_timestamp=tail.parent_timestamp, parent_name_raw=tail.parent_name,
            locators=[ParentLocator(platform_code=loc.platform_code, data_space=loc.data_space,
                                    data_length=loc.data_length, data_offset=loc.data_offset,
                                    reserved=loc.reserved) for loc in tail.locators],
            data_offset=head.data_offset, header_version=head.header_version,
            reserved1=tail.reserved1, reserved2=tail.reserved2, checksum=parsed.checksum,
        )

    def build(self) -> bytes:
        head = {"cookie": COOKIE, "data_offset": self.data_offset,
                "table_offset": self.table_offset, "header_version": self.header_version,
                "max_table_entries": self.max_table_entries, "block_size": self.block_size}
        tail = {
            "parent_unique_id": self.parent_unique_id, "parent_timestamp": self.parent_timestamp,
            "reserved1": self.reserved1, "parent_name": self.parent_name_raw,
            "locators": [{"platform_code": loc.platform_code, "data_space": loc.data_space,
                          "data_length": loc.data_length, "reserved": loc.reserved,
                          "data_offset": loc.data_offset} for loc in self.locators],
            "reserved2": self.reserved2,
        }
        return HEADER_STRUCT.build(head, tail)

    def copy(self, **changes: object) -> DynamicHeader:
        return replace(self, **changes)

    @property
    def parent_name(self) -> str:
        """The parent's name (UTF-16 big-endian, NUL-padded; may be a full Windows path)."""
        raw = self.parent_name_raw
        end = next((i for i in range(0, len(raw) - 1, 2) if raw[i:i + 2] == b"\0\0"), len(raw))
        return printable(raw[:end].decode("utf-16-be", errors="replace"))

    @staticmethod
    def encode_parent_name(name: str) -> bytes:
        raw = name.encode("utf-16-be")
        if len(raw) > PARENT_NAME_BYTES:
            raw = raw[:PARENT_NAME_BYTES]
        return raw.ljust(PARENT_NAME_BYTES, b"\0")
