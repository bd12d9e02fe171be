"""The construct declarations: round trips, checksums inside the structs, geometry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vhdfs.errors import ChecksumError, FormatError
from vhdfs.vhd.bitmap import all_set, bitmap_bytes, bitmap_runs, set_bits
from vhdfs.vhd.checksum import ones_complement_sum
from vhdfs.vhd.dynheader import PLATFORM_W2RU, DynamicHeader, ParentLocator
from vhdfs.vhd.footer import DiskType, Footer, chs_geometry


def test_footer_round_trip_and_checksum_written_on_build():
    footer = Footer.new(DiskType.DYNAMIC, 64 << 20, data_offset=512)
    raw = footer.build()
    assert len(raw) == 512 and raw[:8] == b"conectix"
    stored = int.from_bytes(raw[64:68], "big")
    assert stored == ones_complement_sum(raw[:64] + raw[68:])
    parsed = Footer.parse(raw, "x.vhd", 0)
    assert parsed.current_size == 64 << 20 and parsed.unique_id == footer.unique_id
    assert parsed.build() == raw


def test_footer_checksum_validated_on_parse():
    raw = bytearray(Footer.new(DiskType.FIXED, 1 << 20).build())
    raw[48] ^= 1  # current size changes, checksum does not
    with pytest.raises(ChecksumError, match="checksum field \\(byte 64\\)"):
        Footer.parse(bytes(raw), "x.vhd", 1 << 20)
    lenient = Footer.parse(bytes(raw), "x.vhd", 0, verify=False)
    assert lenient.current_size != 1 << 20


def test_footer_bad_cookie_names_offset():
    raw = b"notavhd!" + bytes(504)
    with pytest.raises(FormatError, match="footer at offset 4096: cookie"):
        Footer.parse(raw, "x.vhd", 4096)


def test_reserved_bytes_kept_verbatim():
    # tapdisk keeps a hidden flag in the reserved area: it must survive a round trip.
    footer = Footer.new(DiskType.DYNAMIC, 1 << 20, data_offset=512)
    footer.reserved = b"\x01" + bytes(426)
    raw = footer.build()
    assert Footer.parse(raw, "x", 0).reserved[0] == 1


def test_header_round_trip_with_locators():
    header = DynamicHeader(table_offset=4096, max_table_entries=32, block_size=2 << 20)
    header.parent_unique_id = bytes(range(16))
    header.parent_name_raw = DynamicHeader.encode_parent_name("C:\\images\\base.vhd")
    header.locators[0] = ParentLocator(PLATFORM_W2RU, 512, 20, 1536)
    raw = header.build()
    assert len(raw) == 1024
    assert int.from_bytes(raw[36:40], "big") == ones_complement_sum(raw[:36] + raw[40:])
    parsed = DynamicHeader.parse(raw, "x", 512)
    assert parsed.parent_name == "C:\\images\\base.vhd"
    assert parsed.locators[0].platform_code == PLATFORM_W2RU
    assert parsed.build() == raw
    broken = bytearray(raw)
    broken[100] ^= 0xFF
    with pytest.raises(ChecksumError, match="byte 36"):
        DynamicHeader.parse(bytes(broken), "x", 512)


@pytest.mark.parametrize(("space", "expected"), [(1, 512), (3, 1536), (512, 512), (1024, 1024)])
def test_locator_data_space_sectors_or_bytes(space, expected):
    assert ParentLocator(PLATFORM_W2RU, space, 10, 1536).space_bytes == expected


@pytest.mark.parametrize(("size", "geometry"), [
    (64 << 20, (963, 8, 17)),
    (1 << 30, (2080, 16, 63)),
    (127 << 30, (65278, 16, 255)),
    (3 << 40, (65535, 16, 255)),
])
def test_chs_geometry_matches_specification(size, geometry):
    assert chs_geometry(size // 512) == geometry


def test_new_footer_geometry_never_understates_the_size():
    exact = Footer.new(DiskType.DYNAMIC, 963 * 8 * 17 * 512, data_offset=512)
    assert (exact.cylinders, exact.heads, exact.sectors_per_track) == (963, 8, 17)
    inexact = Footer.new(DiskType.DYNAMIC, 64 << 20, data_offset=512)
    assert (inexact.cylinders, inexact.heads, inexact.sectors_per_track) == (65535, 16, 255)
    inexact.creator_app = b"vpc "  # even a CHS-sizing reader takes the current size
    assert inexact.virtual_size("auto") == 64 << 20


def test_size_rules():
    footer = Footer.new(DiskType.DYNAMIC, 64 << 20, data_offset=512)
    footer.cylinders, footer.heads, footer.sectors_per_track = 963, 8, 17
    assert footer.virtual_size("auto") == 64 << 20  # our creator: current size
    assert footer.virtual_size("chs") == 963 * 8 * 17 * 512
    footer.creator_app = b"vpc "
    assert footer.virtual_size("auto") == footer.chs_size
    assert footer.virtual_size("current") == 64 << 20
    footer.cylinders, footer.heads, footer.sectors_per_track = 65535, 16, 255
    assert footer.virtual_size("auto") == 64 << 20  # maximum geometry: size by footer


def test_bitmap_size():
    assert bitmap_bytes(2 << 20) == 512
    assert bitmap_bytes(512 << 10) == 512
    assert bitmap_bytes(256 << 20) == 65536


@given(st.binary(min_size=1, max_size=64), st.data())
def test_bitmap_runs_msb_first(bitmap, data):
    total = len(bitmap) * 8
    first = data.draw(st.integers(0, total - 1))
    count = data.draw(st.integers(1, total - first))
    expected = [bool(bitmap[s // 8] & (0x80 >> (s % 8))) for s in range(first, first + count)]
    got = []
    for start, length, value in bitmap_runs(bitmap, first, count):
        assert length > 0
        assert start == first + len(got)
        got += [value] * length
    assert got == expected


@given(st.integers(0, 4095), st.integers(1, 4096), st.data())
def test_set_bits_sets_exactly_the_range(first, count, data):
    count = min(count, 4096 - first)
    bitmap = bytearray(512)
    set_bits(bitmap, first, count)
    for sector in (first - 1, first, first + count - 1, first + count):
        if 0 <= sector < 4096:
            bit = bool(bitmap[sector // 8] & (0x80 >> (sector % 8)))
            assert bit == (first <= sector < first + count)
    assert all_set(bitmap, first, count)
    assert sum(bin(b).count("1") for b in bitmap) == count
