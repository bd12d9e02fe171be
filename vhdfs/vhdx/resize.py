"""A dynamic VHDX made larger in place, in one entry of its log.

A VHDX keeps its virtual size in the metadata region (the Virtual Disk Size item) and one BAT
entry per payload block (and per chunk a sector bitmap entry) in the BAT region, whose length
the region table fixes: growing needs no file layout change as long as the region holds the
new entries (vhdfs and Hyper-V reserve it generously: 1 MiB, 131072 entries, 4 TiB in 32 MiB
blocks). The order:
  1. the last block's bytes past the old size, if stored, are zeroed in place (not part of
     the old disk; the new one must read zeros there);
  2. one log entry (vhdfs.vhdx.journal, after the session's new DataWriteGuid) holding the
     metadata sectors with the new size and, when the BAT region's bytes past the old entries
     are not zeros, those sectors cleared ("not present"): a crash before the entry is
     durable leaves the old disk, after it every reader (ours, qemu, Hyper-V) replays the new.
Shrinking, fixed and differencing VHDX are the caller's to refuse (vhdfs.resize).
"""

from __future__ import annotations

from vhdfs.errors import RefusedError, UsageError
from vhdfs.image import DiskType
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import metadata
from vhdfs.vhdx.layer import VhdxLayer

ZEROS = bytes(4 * fmt.MiB)


def grow_vhdx(layer: VhdxLayer, new_size: int) -> int:
    """Give the dynamic VHDX `layer` (opened writable, nothing written through it) the virtual
    size `new_size` (larger); returns its BAT entries afterwards. The caller closes it."""
    assert layer.journal is not None and layer.disk_type == DiskType.DYNAMIC
    lss, block_size = layer.logical_sector_size, layer.block_size
    if new_size % lss:
        raise UsageError(f"{layer.name}: SIZE {new_size} is not a whole number of its {lss}-byte "
                         f"sectors; use {-(-new_size // lss) * lss}")
    if new_size > fmt.MAX_VIRTUAL_SIZE:
        raise UsageError(f"{layer.name}: SIZE {new_size} exceeds the VHDX limit of 64 TiB")
    old_entries = fmt.bat_entry_count(layer.size, block_size, lss, False)
    new_entries = fmt.bat_entry_count(new_size, block_size, lss, False)
    region = layer.regions[fmt.BAT_REGION]
    capacity = (region.end - region.start) // 8
    if new_entries > capacity:
        room = capacity - capacity // (layer.chunk_ratio + 1)
        raise RefusedError(
            f"{layer.name}: its BAT region holds {capacity} entries ({room * block_size} bytes "
            f"of disk in {block_size}-byte blocks), {new_size} bytes need {new_entries}; "
            "convert it to a new VHDX of that size instead (vhdfs convert IMAGE NEW.vhdx --to "
            "vhdx), then copy, or resize it in Hyper-V (Resize-VHD)")
    # 1. the last block's tail past the old end, where a block is stored
    inner = layer.size % block_size
    if inner:
        entry = layer.bat[fmt.payload_index(layer.size // block_size, layer.chunk_ratio)]
        if entry & fmt.STATE_MASK in (fmt.PAYLOAD_BLOCK_FULLY_PRESENT,
                                      fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT):
            start = (entry & fmt.OFFSET_MASK) + inner
            end = (entry & fmt.OFFSET_MASK) + block_size
            while start < end:
                count = min(len(ZEROS), end - start)
                layer.source.write_at(start, ZEROS[:count])
                start += count
    # 2. the size, and the new entries "not present", in one log entry
    sectors = _cleared_entries(layer, region.start, old_entries, new_entries)
    meta = layer.metadata
    item = meta.item(fmt.VIRTUAL_DISK_SIZE)
    assert item is not None  # a required item: the layer would not have opened without it
    new_region = metadata.with_item(meta.raw, fmt.VIRTUAL_DISK_SIZE,
                                    new_size.to_bytes(8, "little"), item.flags)
    sectors = metadata.changed_sectors(meta.region.start, meta.raw, new_region) + sectors
    layer.flush()
    layer.journal.begin_data()  # what the disk reads changes: children linked to it go stale
    layer.journal.commit(sectors, atomic=True)  # syncs the zeroed tail before the entry
    return new_entries


def _cleared_entries(layer: VhdxLayer, region_start: int, old: int, new: int
                     ) -> list[tuple[int, bytes]]:
    """The BAT region's 4 KiB sectors holding entries [old, new) with those entries zeroed,
    where any of them is not zero (another writer's leftovers past the old end)."""
    sectors = []
    first, last = old * 8 // fmt.LOG_SECTOR, (new * 8 - 1) // fmt.LOG_SECTOR
    for number in range(first, last + 1):
        at = region_start + number * fmt.LOG_SECTOR
        raw = bytearray(layer.read_data(at, fmt.LOG_SECTOR))
        lo = max(old * 8 - number * fmt.LOG_SECTOR, 0)
        hi = min(new * 8 - number * fmt.LOG_SECTOR, fmt.LOG_SECTOR)
        if any(raw[lo:hi]):
            raw[lo:hi] = bytes(hi - lo)
            sectors.append((at, bytes(raw)))
    return sectors
