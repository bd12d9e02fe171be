"""The VHD checksum: one's complement of the byte sum, checksum field excluded."""

from __future__ import annotations

from construct import Checksum, Int32ub, Padding, Pointer, RawCopy, Struct


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
