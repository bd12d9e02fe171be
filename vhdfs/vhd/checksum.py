"""The VHD checksum: one's complement of the byte sum, checksum field excluded."""

from __future__ import annotations

from dataclasses import dataclass

from construct import Checksum, ConstError, Container, Int32ub, Padding, Pointer, RawCopy, Struct
from construct import ChecksumError as ConstructChecksumError

from vhdfs.errors import ChecksumError, FormatError


def ones_complement_sum(data: bytes) -> int:
    return ~sum(data) & 0xFFFFFFFF


def with_checksum(head: Struct, checksum_at: int, tail: Struct, *, verify: bool) -> Struct:
    """A struct laid out as `head | u32 checksum | tail` whose checksum covers head and tail.

    The checksum lives inside the struct: parsing checks it (raising construct's
    ChecksumError) and building writes it. With `verify=False` the stored value is read
    as a plain field, for read-only use of damaged files.
    """
    covered = lambda ctx: ctx.head.data + ctx.tail.data  # noqa: E731
    field = Checksum(Int32ub, ones_complement_sum, covered) if verify else Int32ub
    return Struct(
        "head" / RawCopy(head),
        Padding(4),  # the checksum slot, written by the Pointer below once head and tail are known
        "tail" / RawCopy(tail),
        "checksum" / Pointer(checksum_at, field),
    )


def _field_offsets(struct: Struct, start: int) -> dict[str, int]:
    """Each named field of a fixed-size struct and where it starts (from `start`)."""
    offsets = {}
    for sub in struct.subcons:
        if sub.name:
            offsets[sub.name] = start
        start += sub.sizeof()
    return offsets


@dataclass(frozen=True)
class ChecksummedStruct:
    """A `head | checksum | tail` structure starting with a cookie, in both variants, with
    the errors a damaged copy gives: a wrong cookie, or (verifying) a wrong checksum."""

    name: str  # "footer", "dynamic header"
    size: int
    checksum_at: int
    cookie: bytes
    cookie_fix: str  # what to do when the cookie is wrong
    damage_fix: str  # what to do when the checksum is wrong
    head: Struct
    tail: Struct

    def __post_init__(self) -> None:
        object.__setattr__(self, "verified", with_checksum(self.head, self.checksum_at,
                                                            self.tail, verify=True))
        object.__setattr__(self, "unverified", with_checksum(self.head, self.checksum_at,
                                                              self.tail, verify=False))
        offsets = _field_offsets(self.head, 0) | _field_offsets(self.tail, self.checksum_at + 4)
        offsets["checksum"] = self.checksum_at
        object.__setattr__(self, "offsets", offsets)

    def offset(self, field_name: str) -> int:
        """Where a field starts, in bytes from the start of the structure: what messages
        call its byte ("block size (byte 32)"), computed from the declaration."""
        return self.offsets[field_name]

    def parse(self, data: bytes, source: str, offset: int, *, verify: bool = True) -> Container:
        where = f"{self.name} at offset {offset}"
        if len(data) < self.size:
            raise FormatError(source, f"{where}: only {len(data)} bytes before the end of the "
                              "file", "the file is truncated")
        data = data[:self.size]
        try:
            return (self.verified if verify else self.unverified).parse(data)
        except ConstError:
            raise FormatError(source, f"{where}: cookie is {data[:8]!r}, expected "
                              f"{self.cookie!r}", self.cookie_fix) from None
        except ConstructChecksumError:
            at = self.checksum_at
            stored = int.from_bytes(data[at:at + 4], "big")
            computed = ones_complement_sum(data[:at] + data[at + 4:])
            raise ChecksumError(source, f"{where}: checksum field (byte {at}) is "
                                f"0x{stored:08x}, contents say 0x{computed:08x}",
                                self.damage_fix) from None

    def build(self, head: dict, tail: dict) -> bytes:
        return self.verified.build({"head": {"value": head}, "tail": {"value": tail}})
