"""VHD sector bitmaps: bit 7 of byte 0 is the first sector of the block (MSB first).

VHDX numbers bits the other way round; these helpers are for VHD only.
"""

from __future__ import annotations

SECTOR = 512


def bitmap_bytes(block_size: int) -> int:
    """On-disk size of a block's bitmap: one bit per sector, padded to whole sectors."""
    sectors = block_size // SECTOR
    return (((sectors + 7) // 8) + SECTOR - 1) // SECTOR * SECTOR


def bitmap_runs(bitmap: bytes | bytearray, first: int, count: int) -> list[tuple[int, int, bool]]:
    """Runs of equal bits over sectors [first, first + count): (start, length, is_set).

    Whole 0x00 / 0xFF bytes are taken at once; only mixed bytes are split bit by bit.
    """
    runs: list[tuple[int, int, bool]] = []
    end = first + count
    sector = first
    run_start = first
    run_value: bool | None = None
    while sector < end:
        byte = bitmap[sector >> 3]
        bit_index = sector & 7
        if bit_index == 0 and sector + 8 <= end and byte in (0, 0xFF):
            value, step = byte == 0xFF, 8
        else:
            value, step = bool(byte & (0x80 >> bit_index)), 1
        if value != run_value:
            if run_value is not None:
                runs.append((run_start, sector - run_start, run_value))
            run_start, run_value = sector, value
        sector += step
    if run_value is not None:
        runs.append((run_start, end - run_start, run_value))
    return runs


def set_bits(bitmap: bytearray, first: int, count: int) -> None:
    """Set the bits of sectors [first, first + count)."""
    sector, end = first, first + count
    while sector < end and sector & 7:
        bitmap[sector >> 3] |= 0x80 >> (sector & 7)
        sector += 1
    whole = (end - sector) >> 3
    if whole > 0:
        bitmap[sector >> 3:(sector >> 3) + whole] = b"\xff" * whole
        sector += whole << 3
    while sector < end:
        bitmap[sector >> 3] |= 0x80 >> (sector & 7)
        sector += 1


def all_set(bitmap: bytes | bytearray, first: int, count: int) -> bool:
    runs = bitmap_runs(bitmap, first, count)
    return len(runs) == 1 and runs[0][2]
