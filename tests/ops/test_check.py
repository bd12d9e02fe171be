"""vhdfs check on malformed images: each problem is reported; --repair mends the ones that
need no guessing, reports each change, and a second check is clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.ops.conftest import KiB, MiB, cli, fill, flat, make_base, make_child, run_killed
from vhdfs.image import SECTOR
from vhdfs.maintain.check import check_image
from vhdfs.maintain.faults import Faults
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.dynheader import DynamicHeader
from vhdfs.vhd.footer import FOOTER_SIZE, Footer
from vhdfs.vhd.layer import UNALLOCATED, Layer
from vhdfs.vhd.timestamp import vhd_now

SIZE = 4 * MiB
BLOCK = 512 * KiB


def healthy(folder: Path, kind: str = "dynamic") -> Path:
    """A small dynamic disk with three blocks of data (or a child over one)."""
    base = make_base(folder / "base.vhd", "fixed" if kind == "fixed" else "dynamic", SIZE, BLOCK)
    fill(base, [(0, b"A" * 8192), (BLOCK + 4096, b"B" * 4096), (3 * BLOCK, b"C" * BLOCK)])
    if kind != "differencing":
        return base
    child = make_child(base, folder / "child.vhd")
    fill(child, [(512, b"c" * 1024), (2 * BLOCK, b"D" * 8192), (7 * BLOCK, b"E" * 4096)])
    return child


def facts(path: Path) -> tuple[int, int, list[int]]:
    """(header offset, BAT offset, BAT) of a dynamic or differencing disk."""
    with Layer(LocalFile(path)) as layer:
        return layer.footer.data_offset, layer.header.table_offset, list(layer.bat)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset if offset >= 0 else path.stat().st_size + offset)
        handle.write(data)


def set_bat(path: Path, index: int, value: int) -> None:
    _, bat_at, _ = facts(path)
    patch(path, bat_at + 4 * index, value.to_bytes(4, "big"))


def allocated(path: Path) -> list[int]:
    return [i for i, entry in enumerate(facts(path)[2]) if entry != UNALLOCATED]


def rewrite_footer(path: Path, offset: int, change: Callable[[Footer], Footer]) -> None:
    raw = open(path, "rb").read()[offset:offset + FOOTER_SIZE] if offset >= 0 else \
        path.read_bytes()[offset:][:FOOTER_SIZE]
    patch(path, offset, change(Footer.parse(raw, str(path), 0)).build())


def bad_trailing_cookie(p: Path) -> None:
    patch(p, -FOOTER_SIZE, b"garbage!")


def bad_trailing_checksum(p: Path) -> None:
    patch(p, -FOOTER_SIZE + 24, b"\x7f")  # timestamp changes, checksum does not


def bad_header_checksum(p: Path) -> None:
    header_at = facts(p)[0]
    patch(p, header_at + 40, b"\x55")  # a byte of the parent unique id area (dynamic: unused)


def copy_differs(p: Path) -> None:
    rewrite_footer(p, 0, lambda f: f.copy(timestamp=f.timestamp - 100))


def copy_damaged(p: Path) -> None:
    patch(p, 64, b"\0\0\0\0")


def bat_past_end(p: Path) -> None:
    set_bat(p, allocated(p)[0], 0x00FFFFF0)


def bat_in_metadata(p: Path) -> None:
    set_bat(p, allocated(p)[0], 1)  # sector 1: the dynamic header


def bat_duplicated(p: Path) -> None:
    first, second = allocated(p)[:2]
    set_bat(p, second, facts(p)[2][first])


def truncated(p: Path) -> None:
    with open(p, "r+b") as handle:
        handle.truncate(p.stat().st_size - FOOTER_SIZE - 200 * KiB - 100)


def truncated_aligned(p: Path) -> None:
    with open(p, "r+b") as handle:
        handle.truncate(p.stat().st_size - FOOTER_SIZE - 200 * KiB)


def many_blocks_duplicated(folder: Path) -> Path:
    """Entries in two BAT sectors (128 entries each) share one block's storage."""
    image = make_base(folder / "base.vhd", "dynamic", SIZE, 16 * KiB)
    fill(image, [(0, b"A" * 16 * KiB), (200 * 16 * KiB, b"Z" * 16 * KiB)])
    set_bat(image, 200, facts(image)[2][0])
    return image


def garbage_unaligned(p: Path) -> None:
    with open(p, "ab") as handle:
        handle.write(os.urandom(1000))


def garbage_sectors(p: Path) -> None:
    with open(p, "ab") as handle:
        handle.write(os.urandom(8192))


# (case, disk kind, corruption, code reported, blocks that lose their data by the repair)
REPAIRABLE = [
    ("trailing footer cookie", "dynamic", bad_trailing_cookie, "footer-damaged", 0),
    ("trailing footer checksum", "dynamic", bad_trailing_checksum, "footer-damaged", 0),
    ("fixed footer checksum", "fixed", bad_trailing_checksum, "footer-checksum", 0),
    ("header checksum", "dynamic", bad_header_checksum, "header-checksum", 0),
    ("footer copy differs", "dynamic", copy_differs, "footer-copy-differs", 0),
    ("footer copy damaged", "differencing", copy_damaged, "footer-copy-damaged", 0),
    ("BAT entry past the end", "dynamic", bat_past_end, "bat-bad-entry", 1),
    ("BAT entry in the metadata", "differencing", bat_in_metadata, "bat-bad-entry", 1),
    ("BAT entries duplicated", "dynamic", bat_duplicated, "bat-bad-entry", 2),
    ("truncated file", "dynamic", truncated, "footer-missing", 1),
    ("trailing garbage, unaligned", "differencing", garbage_unaligned, "trailing-garbage", 0),
    ("trailing garbage, sectors", "dynamic", garbage_sectors, "trailing-garbage", 0),
    ("fixed disk with trailing garbage", "fixed", garbage_sectors, "trailing-garbage", 0),
]


@pytest.mark.parametrize(("case", "kind", "corrupt", "code", "lost"), REPAIRABLE,
                         ids=[c[0] for c in REPAIRABLE])
def test_check_reports_and_repair_mends(tmp_path, case, kind, corrupt, code, lost):
    image = healthy(tmp_path, kind)
    good = flat(image)
    corrupt(image)
    found = cli("check", image, "--json")
    assert found.returncode == 4, found.stdout + found.stderr
    report = json.loads(found.stdout)
    codes = [f["code"] for f in report["layers"][0]["findings"] if f["severity"] == "error"]
    assert code in codes

    dry = cli("check", image, "--dry-run")
    assert dry.returncode == 4 and "would repair" in dry.stdout

    fixed = cli("check", image, "--repair")
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    assert "repaired:" in fixed.stdout
    again = cli("check", image)
    assert again.returncode == 0, again.stdout
    after = flat(image)
    block = BLOCK if kind != "fixed" else SIZE
    changed = {offset // block for offset in range(0, len(good), SECTOR)
               if good[offset:offset + SECTOR] != after[offset:offset + SECTOR]}
    assert len(changed) <= lost  # nothing but the dropped blocks changed
    if lost:
        below = "from the parent" if kind == "differencing" else "as zeros"
        assert below in fixed.stdout and "drop BAT entry" in fixed.stdout


def test_locator_beyond_its_space_is_cleared_and_the_child_still_resolves(tmp_path):
    child = healthy(tmp_path, "differencing")
    good = flat(child)
    header_at = facts(child)[0]
    raw = bytearray(open(child, "rb").read()[header_at:header_at + 1024])
    header = DynamicHeader.parse(bytes(raw), "x", 0)
    index = next(i for i, loc in enumerate(header.locators) if loc.code_text == "W2ku")
    header.locators[index].data_length = header.locators[index].space_bytes + 512
    patch(child, header_at, header.build())
    result = cli("info", child)
    assert result.returncode == 3 and "exceeds its data space" in result.stderr
    report = cli("check", child)
    assert report.returncode == 4 and "exceeds its data space" in report.stdout
    assert cli("check", child, "--repair").returncode == 1
    assert cli("check", child).returncode == 0
    assert flat(child) == good


def test_future_timestamp_is_a_warning(tmp_path):
    image = healthy(tmp_path)
    later = vhd_now() + 10 * 365 * 86400
    for offset in (0, -FOOTER_SIZE):
        rewrite_footer(image, offset, lambda f: f.copy(timestamp=later))
    result = cli("check", image, "--json")
    assert result.returncode == 0
    codes = [f["code"] for f in json.loads(result.stdout)["layers"][0]["findings"]]
    assert codes == ["footer-timestamp"]


HEADER_DAMAGE = [
    ("block_size", 0, "block size (byte 32) is 0"),
    ("block_size", 1536, "block size (byte 32) is 1536"),
    ("block_size", 1 << 30, "block size (byte 32) is 1073741824"),
    ("max_table_entries", 0, "max table entries (byte 28) is 0"),
    ("max_table_entries", 3, "max table entries (byte 28) is 3"),
    ("max_table_entries", 0x7FFFFFFF, "ends past the data area"),
    ("table_offset", 1000, "not a multiple of 512"),
    ("table_offset", 1 << 40, "ends past the data area"),
]


@pytest.mark.parametrize(("field", "value", "text"), HEADER_DAMAGE,
                         ids=[f"{f}={v}" for f, v, _ in HEADER_DAMAGE])
def test_not_repairable_stays_a_problem(tmp_path, field, value, text):
    image = healthy(tmp_path)
    header_at = facts(image)[0]
    raw = open(image, "rb").read()[header_at:header_at + 1024]
    header = DynamicHeader.parse(raw, "x", 0)
    setattr(header, field, value)
    patch(image, header_at, header.build())
    before = image.read_bytes()
    result = cli("check", image, "--repair")
    assert result.returncode == 4 and text in result.stdout
    assert image.read_bytes() == before


@pytest.mark.parametrize("disk_type", [0, 1, 5])
def test_unknown_disk_type_cannot_be_checked(tmp_path, disk_type):
    image = healthy(tmp_path)
    for offset in (0, -FOOTER_SIZE):
        rewrite_footer(image, offset, lambda f: f.copy(disk_type=disk_type))
    result = cli("check", image)
    assert result.returncode == 8 and f"disk type (byte 60) is {disk_type}" in result.stdout


@pytest.mark.parametrize("content", [None, b"", b"x" * 100, b"\0" * 4096])
def test_could_not_check(tmp_path, content):
    image = tmp_path / "x.vhd"
    if content is not None:
        image.write_bytes(content)
    result = cli("check", image)
    assert result.returncode == 8
    assert image.name in result.stdout + result.stderr


def test_dry_run_writes_nothing_and_json_names_every_change(tmp_path):
    image = healthy(tmp_path)
    bat_past_end(image)
    garbage_unaligned(image)
    before = image.read_bytes()
    dry = cli("check", image, "--dry-run", "--json")
    assert dry.returncode == 4 and image.read_bytes() == before
    planned = [f for f in json.loads(dry.stdout)["layers"][0]["findings"] if "repair" in f]
    assert {f["code"] for f in planned} == {"trailing-garbage", "bat-bad-entry"}
    assert not any(f["repaired"] for f in planned)
    done = json.loads(cli("check", image, "--repair", "--json").stdout)
    assert done["status"] == "repaired" and done["exit_code"] == 1
    assert sorted(f["code"] for f in done["layers"][0]["findings"] if f.get("repaired")) == \
        ["bat-bad-entry", "trailing-garbage"]


def test_chain_links_are_checked(tmp_path):
    child = healthy(tmp_path, "differencing")
    report = cli("check", child, "--json")
    assert report.returncode == 0
    layers = json.loads(report.stdout)["layers"]
    assert [(layer["role"], layer.get("found_by")) for layer in layers] == [
        ("image", None), ("parent", "W2ru")]
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(tmp_path / "base.vhd", moved / "renamed.vhd")
    missing = cli("check", child)
    assert missing.returncode == 4
    assert "not found" in missing.stdout and "vhdfs set-parent" in missing.stdout
    other = make_base(tmp_path / "base.vhd", "dynamic", SIZE * 2, BLOCK)
    mismatch = cli("check", child, "--parent", other)
    assert mismatch.returncode == 4 and "unique id" in mismatch.stdout
    with Layer(LocalFile(moved / "renamed.vhd")) as layer:  # same id as the parent, twice its size
        parent_id = layer.unique_id
    for offset in (0, -FOOTER_SIZE):
        rewrite_footer(other, offset, lambda f: f.copy(unique_id=parent_id))
    bigger = cli("check", child)
    assert bigger.returncode == 4 and "the sizes must agree" in bigger.stdout


def test_parent_problems_are_reported_not_repaired(tmp_path):
    child = healthy(tmp_path, "differencing")
    base = tmp_path / "base.vhd"
    copy_differs(base)
    before = base.read_bytes()
    result = cli("check", child, "--repair")
    assert result.returncode == 4
    assert f"vhdfs check --repair {base}" in result.stdout
    assert base.read_bytes() == before


def truncated_image(folder: Path) -> Path:
    image = healthy(folder)
    truncated_aligned(image)
    return image


def duplicated_image(folder: Path) -> Path:
    image = healthy(folder)
    bat_duplicated(image)
    return image


@pytest.mark.parametrize("build", [truncated_image, duplicated_image, many_blocks_duplicated],
                         ids=["truncated", "duplicated", "duplicated-across-sectors"])
def test_repair_killed_at_every_point_leaves_a_readable_file(tmp_path, build):
    """Kill -9 before each write and sync of a repair: the file still opens, and repairing
    again ends where an uninterrupted repair does."""
    origin = tmp_path / "origin"
    origin.mkdir()
    build(origin)
    reference = tmp_path / "reference"
    shutil.copytree(origin, reference)
    counted = Faults()
    assert check_image(str(reference / "base.vhd"), repair=True, faults=counted).exit_code == 1
    wanted = flat(reference / "base.vhd")
    assert counted.events >= 2
    for point in range(counted.events):
        work = tmp_path / f"kill-{point}"
        shutil.copytree(origin, work)
        image = work / "base.vhd"
        assert run_killed(lambda faults, image=image: check_image(str(image), repair=True,
                                                                   faults=faults), point) == point
        with Layer(LocalFile(image)):
            pass  # readable at every step
        assert check_image(str(image), repair=True).exit_code in (0, 1)
        assert check_image(str(image)).exit_code == 0
        assert flat(image) == wanted
        shutil.rmtree(work)


def test_vhdx_is_checked_by_its_own_rules(tmp_path):
    """A VHDX is checked as VHDX (tests/vhdx/test_vhdx_check.py), never misread as a VHD."""
    image = tmp_path / "disk.vhdx"
    subprocess.run(["qemu-img", "create", "-f", "vhdx", str(image), "8M"], check=True,
                   capture_output=True)
    result = cli("check", image)
    assert result.returncode == 0 and "(dynamic, image)" in result.stdout, result.stdout


def test_chain_walk_ends_even_if_the_resolver_misses_a_loop(tmp_path, monkeypatch):
    """Defence in depth: the walk counts layers, so a parent loop the resolver does not
    catch (here: a resolver that answers "the child itself") ends as chain-depth."""
    import vhdfs.maintain.check as check_module
    from vhdfs.chain import ParentLink

    child = healthy(tmp_path, "differencing")

    def itself(layer, options, seen):
        return Layer(LocalFile(child)), ParentLink("test", "", str(child))

    monkeypatch.setattr(check_module, "find_parent", itself)
    report = check_image(str(child))
    assert report.exit_code == 4
    assert "chain-depth" in [f.code for layer in report.layers for f in layer.findings]
