"""The VHDX log: the active sequence is replayed in memory, damaged or stale entries are not."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vhdxwriter import BAT_OFFSET, LOG_LENGTH, LOG_OFFSET, LogWrite, Vhdx, patch, write_vhdx

from vhdfs.errors import FormatError
from vhdfs.resolve import open_chain
from vhdfs.vhd.bitmap import bitmap_runs
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import layer as vhdx_layer
from vhdfs.vhdx.bitmap import lsb_runs, set_lsb_bits

MiB = 1 << 20
SIZE = 8 * MiB


def _bat_sector(path) -> bytes:
    with open(path, "rb") as f:
        f.seek(BAT_OFFSET)
        return f.read(fmt.LOG_SECTOR)


def _with_entry(sector: bytes, block: int, state: int, offset: int = 0) -> bytes:
    """`sector` (the first 4 KiB of the BAT) with one payload entry changed."""
    at = 8 * fmt.payload_index(block, fmt.chunk_ratio(MiB, 512))
    return sector[:at] + fmt.bat_entry(state, offset).to_bytes(8, "little") + sector[at + 8:]


def _logged_image(tmp_path, entries_of, **kwargs):
    """An image whose block 3 holds b'L' but whose in-place BAT says 'not present'.

    `entries_of(bat_sector_with_block_3)` returns the log entries to write.
    """
    image = Vhdx(size=SIZE, **kwargs)
    image.write(3 * MiB, b"L" * MiB)
    path = write_vhdx(tmp_path / "logged.vhdx", image)
    replayed = _bat_sector(path)
    image.log_entries = entries_of(replayed)
    path = write_vhdx(tmp_path / "logged.vhdx", image)
    patch(path, BAT_OFFSET, _with_entry(replayed, 3, fmt.PAYLOAD_BLOCK_NOT_PRESENT))
    return path, replayed


def _read_block3(path) -> bytes:
    with open_chain(str(path)) as chain:
        return chain.read(3 * MiB, MiB)


def test_an_unreplayed_entry_is_applied_in_memory_only(tmp_path, monkeypatch):
    path, replayed = _logged_image(tmp_path, lambda bat: [[LogWrite(BAT_OFFSET, bat)]])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _read_block3(path) == b"L" * MiB
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    monkeypatch.setattr(vhdx_layer, "replay_log", lambda *args: None)
    assert _read_block3(path) == bytes(MiB)  # as a reader that ignores the log would see it


def test_a_sequence_that_wraps_round_the_log_end_replays_in_order(tmp_path):
    def entries(bat: bytes) -> list[list[LogWrite]]:
        first = _with_entry(bat, 3, fmt.PAYLOAD_BLOCK_ZERO)
        return [[LogWrite(BAT_OFFSET, first)],  # an older value of the same sector
                [LogWrite(BAT_OFFSET + 8 * fmt.LOG_SECTOR, None, zero_length=2 * fmt.LOG_SECTOR),
                 LogWrite(BAT_OFFSET, bat)]]
    # The first entry (2 sectors) starts one sector before the end: it wraps.
    path, _ = _logged_image(tmp_path, entries, log_start=LOG_LENGTH - fmt.LOG_SECTOR)
    layer = open_chain(str(path)).top
    assert [e.sequence for e in layer.replay.entries] == [10, 11]
    assert layer.replay.entries[0].position == LOG_LENGTH - fmt.LOG_SECTOR
    assert _read_block3(path) == b"L" * MiB


def test_a_damaged_entry_ends_the_sequence(tmp_path):
    def entries(bat: bytes) -> list[list[LogWrite]]:
        return [[LogWrite(BAT_OFFSET, bat)],
                [LogWrite(BAT_OFFSET, _with_entry(bat, 3, fmt.PAYLOAD_BLOCK_UNMAPPED))]]
    path, _ = _logged_image(tmp_path, entries)
    assert _read_block3(path) == bytes(MiB)  # the second (unmapped) entry wins
    # Damage the second entry's data sector (entry 1 is 2 sectors: header + data).
    patch(path, LOG_OFFSET + 3 * fmt.LOG_SECTOR + 100, b"\xee")
    layer = open_chain(str(path)).top
    assert [e.sequence for e in layer.replay.entries] == [10]
    assert _read_block3(path) == b"L" * MiB


def test_a_log_guid_with_no_valid_entry_reads_clean(tmp_path):
    path, _ = _logged_image(tmp_path, lambda bat: [[LogWrite(BAT_OFFSET, bat)]])
    patch(path, LOG_OFFSET, bytes(LOG_LENGTH))
    layer = open_chain(str(path)).top
    assert layer.replay is None and not layer.warnings
    assert _read_block3(path) == bytes(MiB)


def test_entries_of_another_log_guid_are_ignored(tmp_path):
    path, _ = _logged_image(tmp_path, lambda bat: [[LogWrite(BAT_OFFSET, bat)]])
    # Rewrite both headers with a different log GUID: the entries no longer belong.
    for offset in fmt.HEADER_OFFSETS:
        with open(path, "rb") as f:
            f.seek(offset)
            header = fmt.HEADER.parse(f.read(fmt.HEADER_SIZE)).tail.value
        header.log_guid = bytes(range(16))
        patch(path, offset, fmt.HEADER.build(dict(head=dict(value=None), tail=dict(value=header),
                                                  checksum=None)))
    assert open_chain(str(path)).top.replay is None


def test_a_file_truncated_after_the_crash_is_refused(tmp_path):
    path, _ = _logged_image(tmp_path, lambda bat: [[LogWrite(BAT_OFFSET, bat)]])
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - MiB)
    with pytest.raises(FormatError, match="the file was truncated after a crash"):
        open_chain(str(path))


# ---------------------------------------------------------------- LSB-first sector bitmaps
@given(bits=st.lists(st.booleans(), min_size=1, max_size=300), data=st.data())
def test_lsb_runs_match_a_bit_by_bit_model(bits, data):
    bitmap = bytearray(-(-len(bits) // 8) + 1)
    for index, bit in enumerate(bits):
        if bit:
            set_lsb_bits(bitmap, index, 1)
    first = data.draw(st.integers(0, len(bits) - 1))
    count = data.draw(st.integers(1, len(bits) - first))
    runs = lsb_runs(bitmap, first, count)
    flat = [value for _, length, value in runs for _ in range(length)]
    assert flat == bits[first:first + count]
    assert all(a[2] != b[2] for a, b in zip(runs, runs[1:], strict=False))  # maximal runs


def test_vhdx_bit_order_is_the_reverse_of_vhd():
    assert lsb_runs(b"\x01", 0, 8) == [(0, 1, True), (1, 7, False)]
    assert [(f, c, h) for f, c, h in bitmap_runs(bytearray(b"\x01"), 0, 8)] == [(0, 7, False),
                                                                                  (7, 1, True)]
    assert lsb_runs(b"\x00\xff\xff\x0f", 0, 32) == [(0, 8, False), (8, 20, True), (28, 4, False)]
