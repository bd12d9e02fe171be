"""vhdfs/vhd/rules.py: the field offsets its messages name are the VHD specification's, taken
from the construct declarations; each rule as the reader and `check` both ask it."""

from __future__ import annotations

from vhdfs.vhd import rules
from vhdfs.vhd.dynheader import DynamicHeader, ParentLocator
from vhdfs.vhd.footer import DiskType, Footer

# The byte offsets of the Virtual Hard Disk Image Format Specification (v1.0), tables 1 and 2.
SPEC_FOOTER = {"cookie": 0, "features": 8, "version": 12, "data_offset": 16, "timestamp": 24,
               "creator_app": 28, "creator_version": 32, "creator_os": 36, "original_size": 40,
               "current_size": 48, "cylinders": 56, "heads": 58, "sectors_per_track": 59,
               "disk_type": 60, "checksum": 64, "unique_id": 68, "saved_state": 84, "reserved": 85}
SPEC_HEADER = {"cookie": 0, "data_offset": 8, "table_offset": 16, "header_version": 24,
               "max_table_entries": 28, "block_size": 32, "checksum": 36, "parent_unique_id": 40,
               "parent_timestamp": 56, "parent_name": 64, "locators": 576, "reserved2": 768}


def test_field_offsets_are_the_specifications() -> None:
    assert {name: rules.footer_byte(name) for name in SPEC_FOOTER} == SPEC_FOOTER
    assert {name: rules.header_byte(name) for name in SPEC_HEADER} == SPEC_HEADER
    assert [rules.locator_byte(i) for i in range(8)] == [576 + 24 * i for i in range(8)]


def test_a_problem_reads_as_the_readers_error() -> None:
    header = DynamicHeader(table_offset=1536, max_table_entries=8, block_size=3 << 20)
    problem = rules.header_problem(header, 512, 16 << 20, 1 << 30)
    assert problem is not None and problem.code == "block-size" and problem.fatal
    assert problem.message("x.vhd") == str(problem.error("x.vhd")) == (
        "x.vhd: dynamic header at offset 512: block size (byte 32) is 3145728; expected a power "
        "of two from 512 bytes to 256 MiB; the header is damaged")


def test_footer_rules_name_the_footer_they_read() -> None:
    footer = Footer.new(DiskType.DYNAMIC, 8 << 20, data_offset=512)
    assert rules.footer_problem(footer, 0, 1 << 20) is None
    bad = rules.footer_problem(footer.copy(disk_type=5), 4096, 1 << 20)
    assert bad is not None and bad.what.startswith("footer at offset 4096: disk type (byte 60) is 5")
    for data_offset in (0, 100, (1 << 20) - 512):
        assert rules.footer_problem(footer.copy(data_offset=data_offset), 0, 1 << 20) is not None


def test_a_locator_on_other_metadata_is_reported_but_not_fatal() -> None:
    loc = ParentLocator(b"W2ru", 512, 20, 1536)
    regions = [rules.Region(1536, 2048, "the BAT")]
    overlap = rules.locator_problem(2, loc, 1 << 20, regions)
    assert overlap is not None and not overlap.fatal and "overlaps the BAT" in overlap.what
    assert "header byte 624" in overlap.what
    outside = rules.locator_problem(2, loc, 1024, [])
    assert outside is not None and outside.fatal


def test_bad_blocks_both_sharers_are_suspect() -> None:
    bat = [4, 4, rules.UNALLOCATED, 1 << 20]
    bad = rules.bad_blocks(bat, 512, 512, 4 * 512, 8192, [rules.Region(0, 512, "the footer copy")])
    assert set(bad) == {0, 1, 3}
    assert bad[1].endswith("shares its storage with block 0")
    assert bad[0].endswith("shares its storage with block 1")
    assert "runs past the data area ending at 8192" in bad[3]
