"""vhdfs check and check --repair of VHDX files: each crafted damage is found with its
finding and fsck's exit code, --repair mends what needs no guessing (and qemu-img agrees
afterwards), what cannot be mended is left alone, a killed repair leaves a readable file."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from vhdxwriter import (
    BAT_OFFSET,
    METADATA_OFFSET,
    Block,
    LogWrite,
    Vhdx,
    bat_bytes_of,
    parent_locator_for,
    patch,
    region_table,
    write_vhdx,
)

from tests.ops.conftest import run_killed
from tests.tooling import need
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.maintain.check import check_image
from vhdfs.maintain.faults import Faults
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.metadata import with_item

MiB = 1 << 20
SIZE = 8 * MiB


def vhdfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def codes(path: Path, *, repair: bool = False, dry_run: bool = False) -> tuple[int, list[str]]:
    report = check_image(str(path), repair=repair, dry_run=dry_run)
    return report.exit_code, [f.code for layer in report.layers for f in layer.findings]


def flat(path: Path) -> bytes:
    with open_chain(str(path)) as chain:
        return chain.read(0, chain.size)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_check(path: Path) -> subprocess.CompletedProcess:
    need("qemu-img")
    return subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True,
                          text=True)


def dynamic(tmp_path: Path) -> tuple[Vhdx, Path]:
    """A dynamic VHDX of the test writer with data in blocks 0, 2 and 5."""
    image = Vhdx(size=SIZE)
    image.write(0, b"A" * MiB)
    image.write(2 * MiB, b"B" * MiB)
    image.write(5 * MiB, b"C" * 4096)
    return image, write_vhdx(tmp_path / "d.vhdx", image)


def differencing(tmp_path: Path) -> tuple[Vhdx, Path, Path]:
    parent = Vhdx(size=SIZE)
    parent.write(0, b"P" * 4 * MiB)
    base = write_vhdx(tmp_path / "base.vhdx", parent)
    child = Vhdx(size=SIZE, parent_locator=parent_locator_for(
        parent.data_write_guid, relative_path=".\\base.vhdx"))
    child.write(512, b"c" * 1024)  # partially present, block 0
    child.write(3 * MiB, b"C" * MiB)  # a whole block, still partially present here
    return child, write_vhdx(tmp_path / "c.avhdx", child), base


# ------------------------------------------------------------------ clean files
def test_clean_files_are_clean(tmp_path):
    for fixed in (False, True):
        path = tmp_path / f"ours-{fixed}.vhdx"
        create_vhdx(path, SIZE, fixed=fixed, block_size=MiB)
        with open_chain(str(path), writable=True) as chain:
            chain.write(MiB, b"x" * 70_000)
        assert codes(path) == (0, [])
    theirs = tmp_path / "qemu.vhdx"
    subprocess.run(["qemu-img", "create", "-f", "vhdx", str(theirs), "64M"], check=True,
                   capture_output=True)
    subprocess.run(["qemu-io", "-c", "write -P 7 1M 3M", str(theirs)], check=True, capture_output=True)
    assert codes(theirs) == (0, [])
    child = tmp_path / "c.avhdx"
    with open_chain(str(tmp_path / "ours-False.vhdx")) as chain:
        create_vhdx_differencing(child, tmp_path / "ours-False.vhdx", chain.top)
    with open_chain(str(child), writable=True) as chain:
        chain.write(4096, b"y" * 8192)
    exit_code, found = codes(child)
    assert exit_code == 0 and found == []
    done = vhdfs("check", child)
    assert done.returncode == 0 and "(differencing, image)" in done.stdout and "clean" in done.stdout


# ------------------------------------------------------------------ headers and log
@pytest.mark.parametrize("slot, damage", [(1, b"\x01"), (2, b"HEAD")], ids=["crc", "signature"])
def test_a_damaged_header_is_rewritten_from_the_other(tmp_path, slot, damage):
    _, path = dynamic(tmp_path)
    before = flat(path)
    at = fmt.HEADER_OFFSETS[slot - 1] + (200 if damage == b"\x01" else 0)
    patch(path, at, damage)
    assert codes(path) == (4, ["header-damaged"])
    assert codes(path, repair=True)[0] == 1
    assert codes(path) == (0, [])
    assert flat(path) == before and qemu_check(path).returncode == 0
    with open(path, "rb") as handle:  # both copies valid again
        for offset in fmt.HEADER_OFFSETS:
            handle.seek(offset)
            fmt.HEADER.parse(handle.read(fmt.HEADER_SIZE))


def test_both_headers_damaged_is_not_repairable(tmp_path):
    _, path = dynamic(tmp_path)
    patch(path, fmt.HEADER_OFFSETS[0] + 200, b"\x01")
    patch(path, fmt.HEADER_OFFSETS[1], b"HEAD")
    before = digest(path)
    assert codes(path) == (4, ["headers-damaged"])
    done = vhdfs("check", path, "--repair")
    assert done.returncode == 4 and "both VHDX headers are damaged" in done.stdout
    assert "restore the file from a backup" in done.stdout
    assert digest(path) == before


def _logged(tmp_path: Path) -> tuple[Path, bytes]:
    """Block 3 holds data only the log's BAT sector points at (a crash before its place
    was written)."""
    image = Vhdx(size=SIZE)
    image.write(3 * MiB, b"L" * MiB)
    path = write_vhdx(tmp_path / "logged.vhdx", image)
    with open(path, "rb") as handle:
        handle.seek(BAT_OFFSET)
        replayed = handle.read(fmt.LOG_SECTOR)
    image.log_entries = [[LogWrite(BAT_OFFSET, replayed)]]
    path = write_vhdx(path, image)
    patch(path, BAT_OFFSET, bytes(fmt.LOG_SECTOR))
    return path, replayed


def test_a_log_to_replay_is_made_permanent_by_repair(tmp_path):
    path, replayed = _logged(tmp_path)
    before = flat(path)
    assert before[3 * MiB:4 * MiB] == b"L" * MiB  # read through the in-memory replay
    assert codes(path) == (4, ["log-unreplayed"])
    assert qemu_check(path).returncode != 0  # qemu will not open it read-only either
    done = vhdfs("check", path, "--repair", "--json")
    assert done.returncode == 1
    finding = json.loads(done.stdout)["layers"][0]["findings"][0]
    assert finding["code"] == "log-unreplayed" and finding["repaired"] is True
    assert "replay the log into the file" in finding["repair"]
    with open(path, "rb") as handle:
        handle.seek(BAT_OFFSET)
        assert handle.read(fmt.LOG_SECTOR) == replayed  # in place now
    assert codes(path) == (0, []) and flat(path) == before
    assert qemu_check(path).returncode == 0


def test_a_log_guid_without_entries_is_cleared(tmp_path):
    _, path = dynamic(tmp_path)
    with open(path, "r+b") as handle:  # name a log GUID in both headers, log left empty
        for offset in fmt.HEADER_OFFSETS:
            handle.seek(offset)
            header = fmt.HEADER.parse(handle.read(fmt.HEADER_SIZE)).tail.value
            fields = {k: header[k] for k in ("sequence_number", "file_write_guid",
                                             "data_write_guid", "log_version", "version",
                                             "log_length", "log_offset")}
            handle.seek(offset)
            handle.write(fmt.build_header(dict(fields, log_guid=uuid.uuid4().bytes_le)))
    assert codes(path) == (0, ["log-guid-stale"])  # a warning: readers need nothing
    assert codes(path, repair=True) == (1, ["log-guid-stale"])
    assert codes(path) == (0, [])


# ------------------------------------------------------------------ region tables
@pytest.mark.parametrize("slot", [1, 2])
def test_a_damaged_region_table_is_copied_from_the_other(tmp_path, slot):
    _, path = dynamic(tmp_path)
    before = flat(path)
    patch(path, fmt.REGION_TABLE_OFFSETS[slot - 1] + 100, b"\xff")
    assert codes(path) == (4, ["region-table-damaged"])
    assert codes(path, repair=True)[0] == 1
    assert codes(path) == (0, []) and flat(path) == before
    assert qemu_check(path).returncode == 0


def test_region_tables_that_differ_are_made_equal(tmp_path):
    _, path = dynamic(tmp_path)
    table = region_table([(fmt.METADATA_REGION, METADATA_OFFSET, MiB),
                          (fmt.BAT_REGION, BAT_OFFSET, MiB)])  # the same regions, other order
    patch(path, fmt.REGION_TABLE_OFFSETS[1], table)
    assert codes(path) == (4, ["region-table-differs"])
    assert codes(path, repair=True)[0] == 1 and codes(path) == (0, [])


def test_both_region_tables_damaged_and_bad_regions_are_not_repairable(tmp_path):
    _, path = dynamic(tmp_path)
    overlapping = region_table([(fmt.BAT_REGION, 3 * MiB, MiB), (fmt.METADATA_REGION, 3 * MiB, MiB)])
    patch(path, fmt.REGION_TABLE_OFFSETS[0], overlapping)
    patch(path, fmt.REGION_TABLE_OFFSETS[1], overlapping)
    before = digest(path)
    assert codes(path) == (4, ["region-overlap"])
    assert codes(path, repair=True) == (4, ["region-overlap"]) and digest(path) == before
    patch(path, fmt.REGION_TABLE_OFFSETS[0] + 100, b"\xff")
    patch(path, fmt.REGION_TABLE_OFFSETS[1] + 100, b"\xff")
    assert codes(path) == (4, ["region-tables-damaged"])


# ------------------------------------------------------------------ the BAT
@pytest.mark.parametrize("state, offset, reason", [
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, 1 << 30, "past the end of the file"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, METADATA_OFFSET, "inside the metadata region"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, MiB, "inside the log"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, BAT_OFFSET, "inside the BAT region"),
    (fmt.PAYLOAD_BLOCK_FULLY_PRESENT, 0, "inside the header section"),
    (4, 0, "has state 4, which is undefined"),
    (fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT, BAT_OFFSET + 3 * MiB,
     "partially present in a file without a parent"),
], ids=["past-eof", "in-metadata", "in-log", "in-bat", "in-header", "state-4", "partial"])
def test_a_bad_bat_entry_is_dropped(tmp_path, state, offset, reason):
    image, path = dynamic(tmp_path)
    before = flat(path)
    at, entry = bat_bytes_of(image, 4, state, offset)
    patch(path, at, entry)
    done = vhdfs("check", path)
    assert done.returncode == 4 and reason in done.stdout
    assert "drop BAT entry 4: block 4 (disk bytes 4194304-5242879) then reads as zeros" in done.stdout
    assert codes(path, repair=True) == (1, ["bat-bad-entry"])
    assert codes(path) == (0, [])
    assert flat(path) == before  # block 4 was never written: zeros before and after
    assert qemu_check(path).returncode == 0


def test_two_entries_sharing_a_block_are_both_dropped_in_one_log_entry(tmp_path):
    image, path = dynamic(tmp_path)
    before = flat(path)
    with open_chain(str(path)) as chain:
        block2 = chain.top.bat[fmt.payload_index(2, chain.top.chunk_ratio)]
    at, entry = bat_bytes_of(image, 6, fmt.PAYLOAD_BLOCK_FULLY_PRESENT, block2 & fmt.OFFSET_MASK)
    patch(path, at, entry)
    exit_code, found = codes(path)
    assert exit_code == 4 and found == ["bat-bad-entry", "bat-bad-entry"]
    done = vhdfs("check", path, "--repair")
    assert done.returncode == 1 and done.stdout.count("repaired: drop BAT entry") == 2
    after = flat(path)
    assert after[2 * MiB:3 * MiB] == bytes(MiB) and after[6 * MiB:7 * MiB] == bytes(MiB)
    assert after[:2 * MiB] == before[:2 * MiB]  # which of the two owned it cannot be known
    assert codes(path) == (0, []) and qemu_check(path).returncode == 0


def test_a_bad_sector_bitmap_entry_drops_the_blocks_that_need_it(tmp_path):
    child, path, _ = differencing(tmp_path)
    ratio = fmt.chunk_ratio(MiB, 512)
    patch(path, BAT_OFFSET + 8 * fmt.bitmap_index(0, ratio),
          fmt.bat_entry(fmt.SB_BLOCK_PRESENT, METADATA_OFFSET).to_bytes(8, "little"))
    exit_code, found = codes(path)
    assert exit_code == 4 and "bat-bad-bitmap-entry" in found and "bat-bad-entry" in found
    assert codes(path, repair=True)[0] == 1
    assert codes(path) == (0, ["unused-tail"])  # the dropped blocks' space: a note
    assert flat(path) == b"P" * 4 * MiB + bytes(4 * MiB)  # the parent shows through


def test_sector_bitmap_notes(tmp_path):
    child, path, _ = differencing(tmp_path)
    child.blocks[5] = Block(fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT, bytes(MiB))  # no sector marked
    write_vhdx(path, child)
    exit_code, found = codes(path)
    assert exit_code == 0 and "bitmap-empty" in found
    done = vhdfs("check", path)
    assert "1 partially present block(s) mark no sector in their bitmap" in done.stdout


# ------------------------------------------------------------------ the parent locator
def locator_of(pairs: list[tuple[str, str]]) -> bytes:
    """A parent locator item with these key/value pairs, a key listed twice if asked."""
    head = fmt.PARENT_LOCATOR_HEADER.build(dict(locator_type=fmt.VHDX_PARENT_LOCATOR_TYPE,
                                                reserved=0, key_value_count=len(pairs)))
    entries, strings = b"", b""
    start = len(head) + 12 * len(pairs)
    for key, value in pairs:
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        entries += fmt.PARENT_LOCATOR_ENTRY.build(dict(
            key_offset=start + len(strings), value_offset=start + len(strings) + len(k),
            key_length=len(k), value_length=len(v)))
        strings += k + v
    return head + entries + strings


def test_a_locator_the_reader_refuses_is_left_to_set_parent(tmp_path):
    child, path, base = differencing(tmp_path)
    pairs = list(child.parent_locator.items()) + [("relative_path", ".\\other.vhdx")]
    raw = path.read_bytes()[METADATA_OFFSET:METADATA_OFFSET + MiB]
    patch(path, METADATA_OFFSET, with_item(raw, fmt.PARENT_LOCATOR, locator_of(pairs),
                                           fmt.META_IS_REQUIRED))
    before = digest(path)
    assert codes(path) == (4, ["locator-duplicate-key"])
    done = vhdfs("check", path)
    assert "is listed twice" in done.stdout and "vhdfs set-parent CHILD PARENT" in done.stdout
    assert vhdfs("check", path, "--repair").returncode == 4 and digest(path) == before
    refused = vhdfs("set-parent", path, base)  # its ids cannot be read: only --force links it
    assert refused.returncode == 4 and "--force" in refused.stderr and digest(path) == before
    relinked = vhdfs("set-parent", path, base, "--force")
    assert relinked.returncode == 0, relinked.stderr
    assert codes(path) == (0, [])
    assert flat(path)[:512] == b"P" * 512


def test_locator_advice(tmp_path):
    parent = Vhdx(size=SIZE)
    write_vhdx(tmp_path / "base.vhdx", parent)
    child = Vhdx(size=SIZE, parent_locator=parent_locator_for(parent.data_write_guid, upper=True))
    path = write_vhdx(tmp_path / "c.avhdx", child)
    report = check_image(str(path))
    found = {f.code: f for f in report.layers[0].findings}
    assert set(found) == {"locator-no-path", "locator-linkage-case", "parent-link"}
    assert found["locator-no-path"].severity == found["locator-linkage-case"].severity == "warning"
    assert report.exit_code == 4  # the parent is not found: no path names it
    found = check_image(str(path), OpenOptions(parents=[str(tmp_path / "base.vhdx")]))
    assert found.exit_code == 0 and len(found.layers) == 2


# ------------------------------------------------------------------ the chain and the CLI
def test_a_damaged_parent_is_reported_with_the_command_that_mends_it(tmp_path):
    _, path, base = differencing(tmp_path)
    patch(base, fmt.HEADER_OFFSETS[1], b"HEAD")
    done = vhdfs("check", path)
    assert done.returncode == 4
    assert f"repairable: vhdfs check --repair {base}" in done.stdout
    assert vhdfs("check", path, "--repair").returncode == 4  # only IMAGE is repaired
    assert vhdfs("check", base, "--repair").returncode == 1
    assert vhdfs("check", path).returncode == 0


def test_dry_run_writes_nothing_and_json_names_every_change(tmp_path):
    image, path = dynamic(tmp_path)
    patch(path, fmt.HEADER_OFFSETS[0] + 200, b"\x01")
    patch(path, fmt.REGION_TABLE_OFFSETS[1] + 100, b"\xff")
    at, entry = bat_bytes_of(image, 4, fmt.PAYLOAD_BLOCK_FULLY_PRESENT, METADATA_OFFSET)
    patch(path, at, entry)
    before = digest(path)
    done = vhdfs("check", path, "--dry-run", "--json")
    assert done.returncode == 4 and digest(path) == before
    report = json.loads(done.stdout)
    assert report["status"] == "problems" and report["dry_run"] is True
    findings = report["layers"][0]["findings"]
    assert [f["code"] for f in findings] == ["header-damaged", "region-table-damaged",
                                             "bat-bad-entry"]
    assert all(f["repair"] and f["repaired"] is False for f in findings)
    text = vhdfs("check", path, "--dry-run")
    assert text.stdout.count("would repair:") == 3
    assert vhdfs("check", path, "--repair").returncode == 1
    assert codes(path) == (0, []) and qemu_check(path).returncode == 0


def readable(path: Path) -> bytes:
    """The flat disk with the blocks the reader marks damaged read as zeros."""
    with open_chain(str(path)) as chain:
        layer = chain.top
        out = bytearray()
        for block in range(layer.block_count):
            start = block * layer.block_size
            length = min(layer.block_size, chain.size - start)
            out += bytes(length) if block in layer.bad_blocks else chain.read(start, length)
        return bytes(out)


def test_repair_killed_at_every_point_leaves_a_readable_file(tmp_path):
    image, origin = dynamic(tmp_path)
    wanted = flat(origin)
    patch(origin, fmt.HEADER_OFFSETS[0] + 200, b"\x01")
    patch(origin, fmt.REGION_TABLE_OFFSETS[1] + 100, b"\xff")
    at, entry = bat_bytes_of(image, 4, fmt.PAYLOAD_BLOCK_FULLY_PRESENT, METADATA_OFFSET)
    patch(origin, at, entry)
    counted = Faults(record=True)
    probe = tmp_path / "probe.vhdx"
    shutil.copyfile(origin, probe)
    assert check_image(str(probe), repair=True, faults=counted).exit_code == 1
    assert counted.events > 10
    for point in range(counted.events):
        work = tmp_path / f"kill-{point}.vhdx"
        shutil.copyfile(origin, work)
        assert run_killed(lambda faults, work=work: check_image(str(work), repair=True,
                                                                 faults=faults), point) == point
        assert readable(work) == wanted, f"killed before {counted.log[point]}"
        assert check_image(str(work), repair=True).exit_code in (0, 1)
        assert codes(work) == (0, []), counted.log[point]
        assert flat(work) == wanted
        work.unlink()
