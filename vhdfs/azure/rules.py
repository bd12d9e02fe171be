"""Azure's rules for a disk stored as a page blob, checked before the first byte is sent."""

from __future__ import annotations

from vhdfs.errors import UsageError

MIB = 1 << 20
FOOTER = 512
PAGE = 512
# The largest page blob Azure stores (8 TiB), footer included.
PAGE_BLOB_MAX = 8 * (1 << 40)
MAX_DISK = PAGE_BLOB_MAX - MIB  # whole MiB, footer included below the limit


def check_disk(name: str, size: int) -> None:
    """A flat disk of `size` bytes that goes up as a fixed VHD (data + 512-byte footer)."""
    if size <= 0:
        raise UsageError(f"{name}: the disk is empty (virtual size {size}); nothing to upload")
    if size % MIB:
        up = -(-size // MIB) * MIB
        raise UsageError(
            f"{name}: virtual size {size} bytes is not a whole number of MiB, which Azure requires "
            f"of a disk; resize it to {up} bytes ({up // MIB} MiB) first (for example qemu-img "
            f"resize -f vpc BASE.vhd {up} on the base; a child takes its parent's size), or store "
            "the file itself with --as-is")
    if size + FOOTER > PAGE_BLOB_MAX:
        raise UsageError(
            f"{name}: virtual size {size} bytes plus the footer exceeds the largest page blob "
            f"({PAGE_BLOB_MAX} bytes, 8 TiB); shrink the disk (its partitions first) to at most "
            f"{MAX_DISK} bytes")


def check_page_blob(name: str, size: int) -> None:
    """Any file stored as a page blob as it is (--as-is)."""
    if size <= 0:
        raise UsageError(f"{name}: the file is empty; nothing to upload")
    if size % PAGE:
        raise UsageError(f"{name}: is {size} bytes, not a whole number of 512-byte pages, so it "
                         "cannot be a page blob (a VHD file always is: is it truncated?)")
    if size > PAGE_BLOB_MAX:
        raise UsageError(f"{name}: is {size} bytes, more than the largest page blob "
                         f"({PAGE_BLOB_MAX} bytes, 8 TiB)")
