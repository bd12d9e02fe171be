"""VHDX sector bitmaps: bit 0 of byte 0 is the first sector (LSB first).

VHD bitmaps are MSB first (vhdfs.vhd.bitmap); the two must not be mixed up.
"""

from __future__ import annotations


def lsb_bit(bitmap: bytes | bytearray, index: int) -> bool:
    return bool(bitmap[index >> 3] >> (index & 7) & 1)


def lsb_runs(bitmap: bytes | bytearray, first: int, count: int) -> list[tuple[int, int, bool]]:
    """(start, length, is_set) runs covering bits first..first+count-1, start relative to `first`.

    Whole bytes of 0x00 or 0xFF inside a run are skipped at C speed, so a mostly uniform
    bitmap costs little whatever its size.
    """
    runs: list[tuple[int, int, bool]] = []
    view = bytes(bitmap)
    position, end = first, first + count
    while position < end:
        value = lsb_bit(view, position)
        stop = position + 1
        filler = b"\xff" if value else b"\x00"
        while stop < end:
            if stop & 7 == 0:
                byte = stop >> 3
                # bytes.lstrip counts a run of uniform bytes without a Python loop
                rest = view[byte:(end + 7) >> 3]
                skipped = len(rest) - len(rest.lstrip(filler))
                if skipped:
                    stop = min(end, stop + skipped * 8)
                    continue
            if lsb_bit(view, stop) != value:
                break
            stop += 1
        runs.append((position - first, stop - position, value))
        position = stop
    return runs


def set_lsb_bits(bitmap: bytearray, first: int, count: int, value: bool = True) -> None:
    """Set (or clear) bits first..first+count-1; whole bytes inside the range at once."""
    end = first + count
    index = first
    while index < end and index & 7:
        _set_bit(bitmap, index, value)
        index += 1
    whole = (end - index) >> 3
    if whole > 0:
        bitmap[index >> 3:(index >> 3) + whole] = (b"\xff" if value else b"\x00") * whole
        index += whole << 3
    while index < end:
        _set_bit(bitmap, index, value)
        index += 1


def _set_bit(bitmap: bytearray, index: int, value: bool) -> None:
    if value:
        bitmap[index >> 3] |= 1 << (index & 7)
    else:
        bitmap[index >> 3] &= ~(1 << (index & 7)) & 0xFF
