"""The free space of a disk's file systems: the byte ranges no file uses, which `convert
--skip-free` and `upload --skip-free` treat as zeros (neither read nor written nor sent).

For each partition (or the whole disk, without a partition table) whose file system is NTFS,
FAT12/16/32, exFAT or ext2/3/4, TSK's block walk (vhdfs.filesystems.blockwalk) names the
blocks the file system's own records leave unallocated. Everything else is kept as it is:
the partition table and the gaps between partitions, partitions without a file system TSK
knows (swap, LVM, BitLocker, an unformatted one), other file systems, and file systems that
were not left clean (a journal to recover, a dirty flag, a hibernated Windows: what their
records say may not be what is on them) or whose layout TSK misreads (ext groups whose
bitmap was never written: vhdfs.filesystems.ext). A free range never reaches into another
partition (overlapping entries of a damaged table) and is whole 512-byte sectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vhdfs.errors import VhdfsError
from vhdfs.filesystems import ext, fat, ntfs
from vhdfs.filesystems.blockwalk import BlockWalkUnavailable, unallocated_runs
from vhdfs.filesystems.tsk import VolumeImage, fs_type_name, open_file_system, tsk_message
from vhdfs.partitions import FlatDisk, Partition, read_table
from vhdfs.units import human

log = logging.getLogger("vhdfs")

SECTOR = 512
WALKED = frozenset({"NTFS", "FAT12", "FAT16", "FAT32", "exFAT", "ext2", "ext3", "ext4"})


@dataclass
class VolumeFree:
    """One volume's part in the map: its free bytes, or why it was kept whole."""

    number: int  # the partition's number (1 for a file system on the whole disk)
    start: int
    length: int
    file_system: str  # "" when none was recognised
    free: int = 0  # bytes in free ranges
    kept: str = ""  # why the volume is kept as it is ("" when its free space is skipped)

    def to_json(self) -> dict:
        return {"volume": self.number, "start": self.start, "length": self.length,
                "file_system": self.file_system or None, "free": self.free,
                "kept": self.kept or None}


@dataclass
class FreeSpace:
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (disk offset, length), sorted
    volumes: list[VolumeFree] = field(default_factory=list)
    partition_table: str = "none"

    @property
    def free(self) -> int:
        return sum(length for _, length in self.ranges)

    def to_json(self) -> dict:
        return {"partition_table": self.partition_table, "free": self.free,
                "volumes": [volume.to_json() for volume in self.volumes]}

    def summary(self) -> str:
        """Per volume, its free space or why it was kept whole, for a command's summary."""
        parts = []
        for volume in self.volumes:
            what = f"volume {volume.number}" + (f" ({volume.file_system})" if volume.file_system
                                                else "")
            parts.append(f"{what}: kept whole, {volume.kept}" if volume.kept
                         else f"{what}: {human(volume.free)} free")
        return "; ".join(parts) or "no volumes"


def _subtract(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`ranges` (start, end) without the parts inside `holes` (start, end); both sorted."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        for lo, hi in holes:
            if hi <= start or lo >= end:
                continue
            if lo > start:
                out.append((start, lo))
            start = max(start, hi)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out


def _volume_ranges(image: VolumeImage, volume: VolumeFree, disk_end: int) -> list[tuple[int, int]]:
    """The free (start, end) disk ranges of one volume, or [] with `volume.kept` saying why."""
    try:
        fs = open_file_system(image)
    except (OSError, RuntimeError) as exc:
        volume.kept = "no file system TSK recognises"
        log.debug("volume %d: %s", volume.number, tsk_message(exc))
        return []
    volume.file_system = fs_type_name(fs)
    if volume.file_system not in WALKED:
        volume.kept = f"{volume.file_system}: vhdfs reads the free space of NTFS, FAT, exFAT and ext only"
        return []
    keep: list[tuple[int, int]] = []
    block_size = int(fs.info.block_size)
    try:
        if volume.file_system == "NTFS":
            volume.kept = ntfs.why_not_clean(fs)
        elif volume.file_system.startswith("ext"):
            facts = ext.read_ext(image)
            volume.kept = facts.not_clean
            keep = [(first * block_size, (first + count) * block_size)
                    for first, count in facts.uninit_groups]
        else:
            volume.kept = fat.why_not_clean(volume.file_system, image)
        if volume.kept:
            return []
        runs = unallocated_runs(fs)
    except BlockWalkUnavailable as exc:
        volume.kept = str(exc)
        return []
    except (OSError, RuntimeError) as exc:
        if isinstance(image.failure, VhdfsError):
            raise image.failure from None  # the chain could not be read: not a guest problem
        volume.kept = f"TSK could not read its allocation: {tsk_message(exc)}"
        return []
    end = min(volume.start + volume.length, disk_end)
    out: list[tuple[int, int]] = []
    for rel_lo, rel_hi in _subtract([(f * block_size, (f + c) * block_size) for f, c in runs],
                                    keep):
        lo = volume.start + rel_lo
        hi = min(volume.start + rel_hi, end)
        lo = -(-lo // SECTOR) * SECTOR
        hi = hi // SECTOR * SECTOR
        if lo < hi:
            out.append((lo, hi))
    return out


def free_space(disk: FlatDisk) -> FreeSpace:
    """The free ranges of `disk`'s file systems (see the module's docstring)."""
    table = read_table(disk)
    result = FreeSpace(partition_table=table.scheme)
    if table.scheme == "none":
        parts = [Partition(1, 0, disk.size, "whole disk", "none", "")]
    else:
        parts = list(table.partitions)
    found: dict[int, list[tuple[int, int]]] = {}
    for part in parts:
        volume = VolumeFree(part.number, part.start, part.length, "")
        result.volumes.append(volume)
        if part.start >= disk.size:
            volume.kept = "it starts past the end of the disk"
            continue
        image = VolumeImage(disk, part.start, part.length)
        ranges = _volume_ranges(image, volume, disk.size)
        # Never into another partition (the entries of a damaged table may overlap).
        others = sorted((p.start, p.end) for p in parts if p is not part)
        found[volume.number] = _subtract(ranges, others)
    # A hibernated Windows (Fast Startup included) holds every NTFS volume it had mounted,
    # not only the one with hiberfil.sys: keep them all.
    asleep = next((v for v in result.volumes if v.kept == ntfs.HIBERNATED_REASON), None)
    for volume in result.volumes:
        if asleep is not None and volume.file_system == "NTFS" and not volume.kept:
            volume.kept = f"Windows is hibernated on volume {asleep.number}, which may hold it too"
            found[volume.number] = []
        volume.free = sum(hi - lo for lo, hi in found.get(volume.number, []))
    result.ranges = sorted((lo, hi - lo) for ranges in found.values() for lo, hi in ranges)
    return result
