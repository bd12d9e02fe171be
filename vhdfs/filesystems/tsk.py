"""pytsk3 reads a volume through our chain: `VolumeImage` is a TSK image of one volume's bytes,
`open_file_system` opens the file system on it as its own signature says.

TSK calls `read(offset, size)` with offsets inside the volume; we add the volume's start and ask
the disk (a chain), so TSK never sees a byte outside the partition and never a local path. A
failure of the chain (a remote read, a truncated file) is kept and re-raised as itself once TSK
gives up, instead of TSK's generic "Cannot determine file system type".

The guest tools (vhdfs.guest) and the free-space map (vhdfs.filesystems.free) both open volumes
this way.
"""

from __future__ import annotations

import re

import pytsk3

from vhdfs.errors import VhdfsError
from vhdfs.partitions import FlatDisk

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


def fs_type_name(fs: pytsk3.FS_Info) -> str:
    ftype = int(fs.info.ftype)
    return FS_TYPE_NAMES.get(ftype, f"TSK type 0x{ftype:x}")


class VolumeImage(pytsk3.Img_Info):
    def __init__(self, disk: FlatDisk, start: int, length: int) -> None:
        self._disk = disk
        self._start = start
        self._length = max(0, min(length, disk.size - start))
        self.failure: BaseException | None = None
        super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset >= self._length or size <= 0:
            return b""
        try:
            return self._disk.read(self._start + offset, min(size, self._length - offset))
        except BaseException as exc:  # TSK turns it into a RuntimeError; keep the real one
            self.failure = exc
            raise

    def read_bytes(self, offset: int, size: int) -> bytes:
        """Bytes of the volume for our own use (boot sector fields), zero-padded at its end."""
        data = self.read(offset, size)
        return data + bytes(size - len(data))

    def get_size(self) -> int:
        return self._length

    def close(self) -> None:  # the chain belongs to the caller
        pass


_TSK_LOCATION = re.compile(r"^\w+: \([\w.]+:\d+\) ")


def tsk_message(exc: BaseException) -> str:
    """TSK's error text on one line, without the C++ source locations."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = _TSK_LOCATION.sub("", text)
    return re.sub(r"\s*\(- \w+\)$", "", text).strip() or type(exc).__name__


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


def open_file_system(image: VolumeImage) -> pytsk3.FS_Info:
    """Open the file system as its signature says, else (or when that fails) as TSK detects.
    Raises OSError or RuntimeError (TSK's) when none opens, or the chain's own VhdfsError when
    reading the volume failed."""
    hint = _signature_type(image)
    image.failure = None
    if hint != int(pytsk3.TSK_FS_TYPE_DETECT):
        try:
            return pytsk3.FS_Info(image, type=hint)
        except (OSError, RuntimeError):
            if isinstance(image.failure, VhdfsError):
                raise image.failure from None
            image.failure = None  # not what its signature says: let TSK look at every type
    try:
        return pytsk3.FS_Info(image)
    except (OSError, RuntimeError):
        if isinstance(image.failure, VhdfsError):
            raise image.failure from None
        raise
