"""Damaged VHDX files: each problem gives a clear error, or a warning and the good copy."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from vhdxwriter import (
    BAT_OFFSET,
    METADATA_OFFSET,
    Block,
    Vhdx,
    bat_bytes_of,
    parent_locator_for,
    patch,
    region_table,
    write_vhdx,
)

from vhdfs.errors import FormatError
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.layer import VhdxLayer

MiB = 1 << 20
SIZE = 8 * MiB


def _image(tmp_path, **kwargs) -> tuple[Vhdx, object]:
    image = Vhdx(size=SIZE, **kwargs)
    image.write(0, b"A" * MiB)
    image.write(2 * MiB, b"B" * MiB)
    return image, write_vhdx(tmp_path / "d.vhdx", image)


def _open(path) -> VhdxLayer:
    return open_chain(str(path)).top


def _cli_info(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", "info", str(path)], capture_output=True,
                          text=True)


def test_bad_crc_in_the_current_header_uses_the_other(tmp_path):
    g1, g2 = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    _, path = _image(tmp_path, header_guids=(g1, g2), sequence_numbers=(5, 4))
    assert _open(path).unique_id == g1  # header 1 has the higher sequence number
    patch(path, fmt.HEADER_OFFSETS[0] + 200, b"\x01")
    layer = _open(path)
    assert layer.unique_id == g2 and layer.header_number == 2
    assert any("header 1 at offset 65536 fails its CRC-32C check; using header 2" in w
               for w in layer.warnings)
    assert layer.map(0, MiB)[0].kind.value == "here"


def test_both_headers_damaged_is_a_clear_error(tmp_path):
    _, path = _image(tmp_path)
    patch(path, fmt.HEADER_OFFSETS[0] + 200, b"\x01")
    patch(path, fmt.HEADER_OFFSETS[1], b"HEAD")
    with pytest.raises(FormatError, match="both VHDX headers are damaged.*CRC-32C.*'head' signature"):
        _open(path)
    done = _cli_info(path)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "both VHDX headers are damaged" in done.stderr


def test_bad_first_region_table_uses_the_second(tmp_path):
    _, path = _image(tmp_path)
    patch(path, fmt.REGION_TABLE_OFFSETS[0] + 100, b"\xff")
    layer = _open(path)
    assert any("region table 1" in w and "using region table 2" in w for w in layer.warnings)
    patch(path, fmt.REGION_TABLE_OFFSETS[1] + 100, b"\xff")
    with pytest.raises(FormatError, match="both region tables are damaged"):
        _open(path)


@pytest.mark.parametrize("regions, message", [
    ([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, 3 * MiB, MiB)],
     r"metadata region \[3145728, 4194304\) overlaps the BAT region|BAT region \[3145728, 4194304\) "
     r"overlaps the metadata region"),
    ([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, MiB, MiB)],
     r"overlaps the (log|metadata region)"),
    ([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, 2 * MiB + 4096, MiB)],
     "must be whole MiB"),
    ([(fmt.BAT_REGION, 3 * MiB, MiB)], "no metadata region"),
    ([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, 2 * MiB, MiB),
      (fmt.guid("11111111-2222-3333-4444-555555555555"), 9 * MiB, MiB)],
     "a required region vhdfs does not know"),
    ([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, 2 * MiB, 512 * MiB)],
     "past the end of the file"),
], ids=["bat-metadata", "metadata-log", "unaligned", "missing", "unknown-required", "past-eof"])
def test_region_table_problems(tmp_path, regions, message):
    _, path = _image(tmp_path)
    table = region_table(regions)
    patch(path, fmt.REGION_TABLE_OFFSETS[0], table)
    patch(path, fmt.REGION_TABLE_OFFSETS[1], table)
    with pytest.raises(FormatError, match=message):
        _open(path)


def test_bat_region_too_small_for_the_disk(tmp_path):
    image, path = _image(tmp_path)
    patch(path, METADATA_OFFSET + fmt.METADATA_TABLE_SIZE + 8, (1 << 40).to_bytes(8, "little"))
    with pytest.raises(FormatError, match="BAT region at offset 3145728: 1048576 bytes, but a disk "
                       "of 1099511627776 bytes"):
        _open(path)


@pytest.mark.parametrize("state, offset, reason", [
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, 1 << 30, "past the end of the file"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, METADATA_OFFSET, "inside the metadata region"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, 0, "inside the header section"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, BAT_OFFSET + MiB, "shares its storage with block 0"),
    (4, 0, "has state 4, which is undefined"),
    (fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT, BAT_OFFSET + 2 * MiB,
     "partially present in a file without a parent"),
], ids=["past-eof", "in-metadata", "in-header", "shared", "state-4", "partial-no-parent"])
def test_bad_bat_entries_fail_that_block_only(tmp_path, state, offset, reason):
    image, path = _image(tmp_path)
    at, entry = bat_bytes_of(image, 5, state, offset)
    patch(path, at, entry)
    layer = _open(path)
    assert 5 in layer.bad_blocks and reason in layer.bad_blocks[5]
    assert any(reason in w for w in layer.warnings)
    with pytest.raises(FormatError, match="BAT entry 5 .block 5.|block 5 at file offset"):
        layer.map(5 * MiB, 512)
    with open_chain(str(path)) as chain:  # the other blocks still read
        assert chain.read(2 * MiB, MiB) == b"B" * MiB
    done = subprocess.run([sys.executable, "-m", "vhdfs", "convert", str(path),
                           str(tmp_path / "out.raw"), "--to", "raw"], capture_output=True, text=True)
    assert done.returncode == 3 and reason in done.stderr and not (tmp_path / "out.raw").exists()


def test_partially_present_without_its_sector_bitmap(tmp_path):
    parent = Vhdx(size=SIZE)
    child = Vhdx(size=SIZE, parent_locator=parent_locator_for(parent.data_write_guid))
    child.write(512, b"C" * 512)
    child.blocks[3] = Block(fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT, bytes(MiB), {0})
    path = write_vhdx(tmp_path / "c.avhdx", child)
    ratio = fmt.chunk_ratio(MiB, 512)
    patch(path, BAT_OFFSET + 8 * fmt.bitmap_index(0, ratio), bytes(8))  # bitmap: not present
    layer = VhdxLayer(LocalFile(path))
    assert "its sector bitmap (BAT entry 4096) is not" in layer.bad_blocks[3]
    assert "sector bitmap" in layer.bad_blocks[0]


@pytest.mark.parametrize("offset, value, message", [
    (0, (3 * MiB).to_bytes(4, "little"), "block size 3145728; expected a power of two"),
    (24, (1000).to_bytes(4, "little"), "logical sector size 1000"),
    (8, (SIZE + 100).to_bytes(8, "little"), "virtual disk size 8388708"),
], ids=["block-size", "sector-size", "disk-size"])
def test_metadata_item_problems(tmp_path, offset, value, message):
    _, path = _image(tmp_path)
    # Items follow the 64 KiB table in the writer's order, each padded to 8 bytes:
    # file parameters (8), disk size (8), disk id (16), logical (4+4), physical (4+4)
    at = {0: 0, 8: 8, 24: 32}[offset]
    patch(path, METADATA_OFFSET + fmt.METADATA_TABLE_SIZE + at, value)
    with pytest.raises(FormatError, match=message):
        _open(path)


def test_not_a_vhdx_signature(tmp_path):
    path = tmp_path / "x.vhdx"
    path.write_bytes(b"vhdxfilX" + bytes(2 * MiB))
    done = _cli_info(path)
    assert done.returncode == 3 and "vhdfs: error:" in done.stderr
