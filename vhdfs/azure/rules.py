"""Azure's rules for a disk stored as a page blob, checked before the first byte is sent.

The numbers (MiB alignment, the upload minimum) come from the packaged table
vhdfs/data/azure_disks.toml, which `vhdfs verify` applies too, with their sources; the page
blob limit (8 TiB) is the storage service's own.
"""

from __future__ import annotations

from vhdfs.errors import UsageError
from vhdfs.guest.azure_rules import disk_rules, resize_command
from vhdfs.units import human

FOOTER = 512
PAGE = 512
# The largest page blob Azure stores (8 TiB), footer included.
PAGE_BLOB_MAX = 8 * (1 << 40)


def check_disk(name: str, size: int) -> None:
    """A flat disk of `size` bytes that goes up as a fixed VHD (data + 512-byte footer)."""
    rules = disk_rules()
    mib = rules.alignment
    if size <= 0:
        raise UsageError(f"{name}: the disk is empty (virtual size {size}); nothing to upload")
    if size % mib:
        up = -(-size // mib) * mib
        raise UsageError(
            f"{name}: virtual size {size} bytes is not a whole number of MiB, which Azure requires "
            f"of a disk (a fixed VHD of N MiB + 512 bytes); make a copy {up} bytes "
            f"({human(up)}) large with: {resize_command(name, up, gpt=False)} (then sgdisk -e "
            "for a GPT disk), or store the file as it is with --as-is")
    if size < rules.min_virtual_size:
        low = rules.min_virtual_size
        raise UsageError(
            f"{name}: virtual size {human(size)} is below Azure's upload minimum of {human(low)}; "
            f"grow a copy with: {resize_command(name, low, gpt=False)}, or store the file as it "
            "is with --as-is")
    largest = min(rules.max_virtual_size, PAGE_BLOB_MAX - mib)
    if size > largest:
        raise UsageError(
            f"{name}: virtual size {size} bytes is more than a page blob holds as a disk "
            f"({largest} bytes, {human(largest)}, plus the footer); shrink the guest's partitions "
            "and the disk first")


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
