"""The volumes of a disk: partitions (or the whole disk) with the file system TSK finds on each.

A disk without a partition table whose whole disk is a file system is volume 1, as a partition
would be. A partition whose file system TSK cannot open is still listed, with the reason, so
`vhdfs volumes` shows the whole table and the other commands can say why a volume is unusable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytsk3

from vhdfs.errors import VhdfsError
from vhdfs.guest.errors import FileSystemError, NoSuchVolume
from vhdfs.guest.fsid import fs_identity
from vhdfs.guest.image import FlatDisk, VolumeImage, tsk_message
from vhdfs.partitions import Partition, PartitionTable, read_table

FS_TYPE_NAMES = {
    int(pytsk3.TSK_FS_TYPE_NTFS): "NTFS",
    int(pytsk3.TSK_FS_TYPE_FAT12): "FAT12",
    int(pytsk3.TSK_FS_TYPE_FAT16): "FAT16",
    int(pytsk3.TSK_FS_TYPE_FAT32): "FAT32",
    int(pytsk3.TSK_FS_TYPE_EXFAT): "exFAT",
    int(pytsk3.TSK_FS_TYPE_EXT2): "ext2",
    int(pytsk3.TSK_FS_TYPE_EXT3): "ext3",
    int(pytsk3.TSK_FS_TYPE_EXT4): "ext4",
    int(pytsk3.TSK_FS_TYPE_ISO9660): "ISO9660",
    int(pytsk3.TSK_FS_TYPE_HFS): "HFS+",
    int(pytsk3.TSK_FS_TYPE_FFS1): "UFS1",
    int(pytsk3.TSK_FS_TYPE_FFS2): "UFS2",
}
# File systems whose names Windows (and TSK's lookups) compare without regard to case.
CASE_INSENSITIVE = frozenset({"NTFS", "FAT12", "FAT16", "FAT32", "exFAT"})


@dataclass
class Volume:
    number: int
    start: int  # bytes from the start of the disk
    length: int
    partition: Partition | None  # None: the whole disk is this file system
    image: VolumeImage
    fs: pytsk3.FS_Info | None = None
    fs_type: str = ""  # "" when no file system was recognised
    label: str = ""
    uuid: str = ""
    block_size: int = 0
    error: str = ""  # why no file system could be opened

    @property
    def case_insensitive(self) -> bool:
        return self.fs_type in CASE_INSENSITIVE

    @property
    def bootable(self) -> bool:
        return bool(self.partition and self.partition.bootable)

    @property
    def type_name(self) -> str:
        return self.partition.type_name if self.partition else "whole disk"

    def describe(self) -> str:
        """'volume 2 (NTFS "Windows")' for messages."""
        what = self.fs_type or "no file system"
        if self.label:
            what += f' "{self.label}"'
        return f"volume {self.number} ({what})"

    def require_fs(self) -> pytsk3.FS_Info:
        if self.fs is None:
            raise FileSystemError(f"{self.describe()}: {self.error or 'no file system'}")
        return self.fs


@dataclass
class DiskVolumes:
    table: PartitionTable
    volumes: list[Volume] = field(default_factory=list)

    def get(self, number: int) -> Volume:
        for volume in self.volumes:
            if volume.number == number:
                return volume
        have = ", ".join(str(v.number) for v in self.volumes) or "none"
        raise NoSuchVolume(f"there is no volume {number} on this disk (volumes: {have}); "
                           "see vhdfs volumes IMAGE")

    def with_fs(self) -> list[Volume]:
        return [v for v in self.volumes if v.fs is not None]


def _signature_type(image: VolumeImage) -> int:
    """The file system a volume's own signature names (NTFS/exFAT OEM id, FAT32/FAT type
    string, ext superblock magic), else TSK's autodetection. TSK's autodetection opens the
    volume as every type it knows, and its YAFFS2 probe alone reads tens of MiB (26 MiB of a
    111 MiB NTFS volume): from blob storage that was most of what a guest command fetched."""
    boot = image.read_bytes(0, 512)
    if boot[3:11] == b"NTFS    ":
        return int(pytsk3.TSK_FS_TYPE_NTFS_DETECT)
    if boot[3:11] == b"EXFAT   ":
        return int(pytsk3.TSK_FS_TYPE_EXFAT)
    if boot[0x52:0x57] == b"FAT32" or boot[0x36:0x39] == b"FAT":
        return int(pytsk3.TSK_FS_TYPE_FAT_DETECT)
    if image.read_bytes(1024 + 56, 2) == b"\x53\xef":
        return int(pytsk3.TSK_FS_TYPE_EXT_DETECT)
    return int(pytsk3.TSK_FS_TYPE_DETECT)


def _fs_info(image: VolumeImage) -> pytsk3.FS_Info:
    """Open the file system as its signature says, else (or when that fails) as TSK detects."""
    hint = _signature_type(image)
    if hint != int(pytsk3.TSK_FS_TYPE_DETECT):
        try:
            return pytsk3.FS_Info(image, type=hint)
        except (OSError, RuntimeError):
            if isinstance(image.failure, VhdfsError):
                raise
            image.failure = None  # not what its signature says: let TSK look at every type
    return pytsk3.FS_Info(image)


def _open_fs(volume: Volume) -> None:
    image = volume.image
    image.failure = None
    try:
        fs = _fs_info(image)
    except (OSError, RuntimeError) as exc:
        if isinstance(image.failure, VhdfsError):
            raise image.failure from None  # the chain could not be read: not a guest problem
        volume.error = tsk_message(exc)
        if "Cannot determine file system type" in volume.error:
            volume.error = "no file system TSK recognises (unformatted, encrypted, or damaged)"
        return
    volume.fs = fs
    ftype = int(fs.info.ftype)
    volume.fs_type = FS_TYPE_NAMES.get(ftype, f"TSK type 0x{ftype:x}")
    volume.block_size = int(fs.info.block_size)
    try:
        volume.label, volume.uuid = fs_identity(volume.fs_type, image, fs)
    except (OSError, RuntimeError, ValueError):
        pass  # identity is a courtesy; the file system itself opened


def open_volumes(disk: FlatDisk) -> DiskVolumes:
    """Every partition of `disk` with its file system opened (when TSK recognises one)."""
    table = read_table(disk)
    result = DiskVolumes(table)
    if table.scheme == "none":
        whole = Volume(1, 0, disk.size, None, VolumeImage(disk, 0, disk.size))
        _open_fs(whole)
        if whole.fs is not None:
            result.volumes.append(whole)
        return result
    for part in table.partitions:
        volume = Volume(part.number, part.start, part.length, part,
                        VolumeImage(disk, part.start, part.length))
        if part.start >= disk.size:
            volume.error = f"starts at byte {part.start}, past the end of the disk ({disk.size} bytes)"
        else:
            _open_fs(volume)
        result.volumes.append(volume)
    return result
