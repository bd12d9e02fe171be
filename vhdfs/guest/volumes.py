"""The volumes of a disk: partitions (or the whole disk) with the file system TSK finds on each.

A disk without a partition table whose whole disk is a file system is volume 1, as a partition
would be. A partition whose file system TSK cannot open is still listed, with the reason, so
`vhdfs volumes` shows the whole table and the other commands can say why a volume is unusable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytsk3

from vhdfs.errors import VhdfsError
from vhdfs.filesystems.tsk import VolumeImage, fs_type_name, open_file_system, tsk_message
from vhdfs.guest.errors import FileSystemError, NoSuchVolume
from vhdfs.guest.fsid import fs_identity
from vhdfs.guest.image import FlatDisk
from vhdfs.partitions import Partition, PartitionTable, read_table

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


def _open_fs(volume: Volume) -> None:
    image = volume.image
    image.failure = None
    try:
        fs = open_file_system(image)
    except (OSError, RuntimeError) as exc:
        if isinstance(image.failure, VhdfsError):
            raise image.failure from None  # the chain could not be read: not a guest problem
        volume.error = tsk_message(exc)
        if "Cannot determine file system type" in volume.error:
            volume.error = "no file system TSK recognises (unformatted, encrypted, or damaged)"
        return
    volume.fs = fs
    volume.fs_type = fs_type_name(fs)
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
