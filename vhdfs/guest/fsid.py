"""Label and identity (UUID / serial) of a file system TSK has recognised.

These are the values `blkid` shows and that boot configuration refers to (fstab `UUID=`, grub
`root=UUID=`, `search --fs-uuid`). They sit at fixed, documented places: the NTFS boot sector's
serial (0x48), the FAT BPB's volume id and label, the ext superblock's s_uuid and s_volume_name.
The NTFS label is the $VOLUME_NAME attribute of $Volume, which TSK reads for us.
"""

from __future__ import annotations

import uuid

import pytsk3

from vhdfs.guest.image import VolumeImage

NTFS_VOLUME_INODE = 3
NTFS_ATTR_VOLUME_NAME = 0x60
EXT_SUPERBLOCK = 1024


def fs_identity(fs_type: str, image: VolumeImage, fs: pytsk3.FS_Info) -> tuple[str, str]:
    """(label, uuid) of the file system; empty strings where it has none."""
    if fs_type == "NTFS":
        boot = image.read_bytes(0, 512)
        return _ntfs_label(fs), f"{int.from_bytes(boot[0x48:0x50], 'little'):016X}"
    if fs_type in ("FAT12", "FAT16", "FAT32"):
        boot = image.read_bytes(0, 512)
        id_at, label_at = (0x43, 0x47) if fs_type == "FAT32" else (0x27, 0x2B)
        serial = int.from_bytes(boot[id_at:id_at + 4], "little")
        label = boot[label_at:label_at + 11].decode("latin-1").strip()
        return ("" if label == "NO NAME" else label), f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
    if fs_type == "exFAT":
        boot = image.read_bytes(0, 512)
        serial = int.from_bytes(boot[0x64:0x68], "little")
        return "", f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
    if fs_type.startswith("ext"):
        sb = image.read_bytes(EXT_SUPERBLOCK, 1024)
        label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return label, str(uuid.UUID(bytes=sb[0x68:0x78]))
    return "", ""


def _ntfs_label(fs: pytsk3.FS_Info) -> str:
    try:
        volume = fs.open_meta(inode=NTFS_VOLUME_INODE)
        for attr in volume:
            if int(attr.info.type) == NTFS_ATTR_VOLUME_NAME:
                raw = volume.read_random(0, attr.info.size, attr.info.type, attr.info.id)
                return raw.decode("utf-16-le", errors="replace")
    except (OSError, RuntimeError):
        pass  # a missing label is not worth failing the volume for
    return ""
