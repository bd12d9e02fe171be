"""Azure's rules for a disk stored as a page blob, and the VM sizes an image fits: one table.

The numbers (MiB alignment, the upload minimum, the OS disk limits) live in the packaged tables
vhdfs/data/azure_disks.toml and vm_sizes.toml with their sources; this module only applies them
to a virtual size. `vhdfs upload` checks them before the first byte is sent (`check_disk`,
`check_page_blob`); `vhdfs verify` reports them (`check_size`, `fitting_vm_sizes`); a size
that breaks them comes with the `vhdfs resize` command that fixes it (`resize_command`). The
page blob limit (8 TiB) is the storage service's own.
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass
from importlib import resources

from vhdfs.errors import UsageError
from vhdfs.units import human

GiB = 1 << 30
PAGE = 512
# The largest page blob Azure stores (8 TiB), footer included.
PAGE_BLOB_MAX = 8 * (1 << 40)


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("vhdfs").joinpath(f"data/{name}").read_text("utf-8"))


@dataclass(frozen=True)
class DiskRules:
    alignment: int
    min_virtual_size: int
    max_virtual_size: int
    os_max: int
    mbr_usable: int
    ephemeral_max: int
    source_alignment: str
    source_upload_size: str
    source_os_disk: str


@dataclass(frozen=True)
class VmSize:
    name: str
    vcpus: int
    memory_gib: float
    temp_gib: float
    cache_gib: float

    def placements(self, size: int) -> list[str]:
        """Where an ephemeral OS disk of `size` bytes fits on this VM size."""
        need = -(-size // GiB)  # Azure sizes OS disks in whole GiB
        out = []
        if self.cache_gib >= need:
            out.append("cache")
        if self.temp_gib >= need:
            out.append("temp disk")
        return out


def disk_rules() -> DiskRules:
    data = _load("azure_disks.toml")
    upload, os_disk = data["upload"], data["os_disk"]
    return DiskRules(upload["alignment"], upload["min_virtual_size"], upload["max_virtual_size"],
                     os_disk["max_size"], os_disk["mbr_usable"], os_disk["ephemeral_max"],
                     upload["source_alignment"], upload["source_upload_size"], os_disk["source"])


def vm_sizes() -> list[VmSize]:
    return [VmSize(s["name"], s["vcpus"], s["memory_gib"], s.get("temp_gib", 0), s.get("cache_gib", 0))
            for s in _load("vm_sizes.toml")["size"]]


def resize_command(image: str, new_size: int, *, in_place: bool = False) -> str:
    """The command that gives the disk `new_size` bytes: `vhdfs resize` of the image itself
    when it is one local VHD (`in_place`: fixed or dynamic, no parent), else of a fixed-VHD
    copy of its flattened chain (a child, a VHDX, a raw image, a blob). vhdfs resize then
    names what the partition table needs (sgdisk -e for GPT)."""
    if in_place:
        return f"vhdfs resize {shlex.quote(image)} {new_size}"
    return (f"vhdfs convert {shlex.quote(image)} disk-fixed.vhd --to fixed && "
            f"vhdfs resize disk-fixed.vhd {new_size}")


def _resize_advice(image: str, target: int, *, in_place: bool, gpt: bool = False) -> str:
    what = "resize it" if in_place else "make a resized copy"
    text = f"{what} with: {resize_command(image, target, in_place=in_place)}"
    if gpt:
        text += " (then sgdisk -e, as vhdfs resize says: the backup GPT moves to the new end)"
    return text


@dataclass
class SizeCheck:
    status: str  # "pass", "fail", "warn"
    message: str


def check_size(size: int, image: str, scheme: str, rules: DiskRules | None = None, *,
               in_place: bool = False) -> list[SizeCheck]:
    """The upload and OS-disk rules for a disk of virtual size `size` (bytes). `in_place`:
    the image is one local VHD, which vhdfs resize changes itself (see resize_command)."""
    rules = rules or disk_rules()
    out: list[SizeCheck] = []
    mib = rules.alignment
    gpt = scheme == "gpt"
    if size % mib:
        target = -(-size // mib) * mib
        out.append(SizeCheck("fail", f"virtual size {size} bytes is not a whole number of MiB "
                             f"(Azure takes a fixed VHD of N MiB + 512 bytes); {target} bytes "
                             f"({human(target)}) is: "
                             f"{_resize_advice(image, target, in_place=in_place, gpt=gpt)}"))
    else:
        out.append(SizeCheck("pass", f"virtual size {size} bytes ({human(size)}) is a whole "
                             "number of MiB"))
    if size < rules.min_virtual_size:
        target = rules.min_virtual_size
        out.append(SizeCheck("fail", f"virtual size {human(size)} is below Azure's upload minimum "
                             f"of {human(target)}; "
                             f"{_resize_advice(image, target, in_place=in_place, gpt=gpt)}"))
    elif size > rules.os_max:
        out.append(SizeCheck("fail", f"virtual size {human(size)} is above Azure's OS disk "
                             f"maximum of {human(rules.os_max)}; shrink the guest's partitions "
                             "and the disk first (vhdfs resize refuses to cut what they hold)"))
    else:
        out.append(SizeCheck("pass", f"within Azure's OS disk limits ({human(rules.min_virtual_size)}"
                             f" to {human(rules.os_max)})"))
    if scheme == "mbr" and size > rules.mbr_usable:
        out.append(SizeCheck("warn", f"the disk is MBR-partitioned: only its first "
                             f"{human(rules.mbr_usable)} are usable; use GPT to use it all"))
    return out


def fitting_vm_sizes(size: int, rules: DiskRules | None = None) -> tuple[list[tuple[VmSize, list[str]]],
                                                                          int]:
    """(VM sizes an ephemeral OS disk of `size` fits, with placements; how many sizes are listed)."""
    rules = rules or disk_rules()
    sizes = vm_sizes()
    if size > rules.ephemeral_max:
        return [], len(sizes)
    return [(s, s.placements(size)) for s in sizes if s.placements(size)], len(sizes)


def check_disk(name: str, size: int, *, in_place: bool = False) -> None:
    """A flat disk of `size` bytes that goes up as a fixed VHD (data + 512-byte footer).
    `in_place`: as check_size's."""
    rules = disk_rules()
    mib = rules.alignment
    if size <= 0:
        raise UsageError(f"{name}: the disk is empty (virtual size {size}); nothing to upload")
    if size % mib:
        up = -(-size // mib) * mib
        raise UsageError(
            f"{name}: virtual size {size} bytes is not a whole number of MiB, which Azure requires "
            f"of a disk (a fixed VHD of N MiB + 512 bytes); {up} bytes ({human(up)}) is: "
            f"{_resize_advice(name, up, in_place=in_place)}; or store the file as it is with "
            "--as-is")
    if size < rules.min_virtual_size:
        low = rules.min_virtual_size
        raise UsageError(
            f"{name}: virtual size {human(size)} is below Azure's upload minimum of {human(low)}; "
            f"{_resize_advice(name, low, in_place=in_place)}; or store the file as it is with "
            "--as-is")
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
