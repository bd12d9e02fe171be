"""Whether a FAT or exFAT volume was left clean: the dirty flags its drivers set while it is
mounted and clear when they finish with it. A volume not cleanly unmounted may have clusters
in use that its FAT (or allocation bitmap) does not record yet; the free-space map keeps it
whole.

- FAT16/FAT32: the "dirty" bit 0 of the boot sector's state byte (0x25, FAT32: 0x41), which
  Linux and Windows NT set while mounted, and the "clean shutdown" bit of FAT entry 1 (FAT16
  bit 15, FAT32 bit 27), which Windows clears while mounted. FAT12 has neither.
- exFAT: VolumeFlags (boot sector 0x6A) bit 1, VolumeDirty.
"""

from __future__ import annotations

from construct import Bytes, Int8ul, Int16ul, Struct

from vhdfs.filesystems.tsk import VolumeImage

BPB = Struct(
    "jump" / Bytes(3),
    "oem" / Bytes(8),
    "bytes_per_sector" / Int16ul,
    "sectors_per_cluster" / Int8ul,
    "reserved_sectors" / Int16ul,
)
FAT16_STATE_AT, FAT32_STATE_AT = 0x25, 0x41
STATE_DIRTY = 0x01
FAT16_CLEAN = 0x8000
FAT32_CLEAN = 0x08000000
EXFAT_FLAGS_AT = 0x6A
EXFAT_DIRTY = 0x0002


def why_not_clean(fs_type: str, image: VolumeImage) -> str:
    """Why the volume's allocation may be behind what is on it ("" when clean)."""
    boot = image.read_bytes(0, 512)
    if fs_type == "exFAT":
        if int.from_bytes(boot[EXFAT_FLAGS_AT:EXFAT_FLAGS_AT + 2], "little") & EXFAT_DIRTY:
            return "exFAT marked dirty (VolumeDirty: not cleanly unmounted)"
        return ""
    if fs_type not in ("FAT16", "FAT32"):
        return ""
    state_at, width, clean = ((FAT32_STATE_AT, 4, FAT32_CLEAN) if fs_type == "FAT32"
                              else (FAT16_STATE_AT, 2, FAT16_CLEAN))
    if boot[state_at] & STATE_DIRTY:
        return f"{fs_type} marked dirty (boot sector state: not cleanly unmounted)"
    bpb = BPB.parse(boot)
    entry1 = image.read_bytes(bpb.reserved_sectors * bpb.bytes_per_sector + width, width)
    if not int.from_bytes(entry1, "little") & clean:
        return f"{fs_type} marked dirty (FAT entry 1: not cleanly shut down)"
    return ""
