"""Small reads of guest files that inspection needs (a header, not the whole file)."""

from __future__ import annotations

from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import Found


def read_at(found: Found, offset: int, size: int) -> bytes:
    """Up to `size` bytes of the file at `offset` (fewer at its end, none past it)."""
    length = int(found.file.info.meta.size)
    size = min(size, length - offset)
    if size <= 0:
        return b""
    volume = found.volume
    return tsk_call(volume.image, f"{volume.describe()}: {found.path}", found.file.read_random,
                    offset, size)


def read_head(found: Found, size: int) -> bytes:
    return read_at(found, 0, size)
