"""vhdfs set-parent: re-link a child to a moved or renamed parent, atomically, and only to
the disk it was made on (unless forced)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.ops.conftest import (
    KiB,
    MiB,
    cli,
    fill,
    flat,
    libvhdi_unreliable_sectors,
    make_base,
    make_child,
    run_killed,
    same_except,
)
from tests.tooling import vhdimount
from vhdfs.errors import ChainCycle, ParentMismatch, ParentNotFound, RefusedError
from vhdfs.maintain.check import check_image
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.journals import setparent_journal_of
from vhdfs.maintain.setparent import set_parent
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader
from vhdfs.vhd.layer import Layer

SIZE = 4 * MiB


def chain(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    base = make_base(folder / "base.vhd", "dynamic", SIZE, 512 * KiB)
    fill(base, [(0, b"B" * 64 * KiB), (3 * MiB, b"b" * 4096)])
    child = make_child(base, folder / "child.vhd")
    fill(child, [(4096, b"C" * 8192), (2 * MiB, b"c" * 4096)])
    return child, base


def header_bytes(child: Path) -> bytes:
    with Layer(LocalFile(child)) as layer:
        at = layer.footer.data_offset
    return child.read_bytes()[at:at + HEADER_SIZE]


def info(child: Path) -> dict:
    result = cli("info", child, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["layers"][0]


def test_relink_after_move_and_rename(tmp_path):
    child, base = chain(tmp_path / "a")
    before = flat(child)
    target = tmp_path / "b" / "sub" / "renamed base.vhd"
    target.parent.mkdir(parents=True)
    os.replace(base, target)
    broken = cli("info", child)
    assert broken.returncode == ParentNotFound.exit_code
    assert "vhdfs set-parent" in broken.stderr
    result = cli("set-parent", child, target)
    assert result.returncode == 0, result.stderr
    assert "re-linked" in result.stdout
    top = info(child)
    assert top["parent_name"] == "renamed base.vhd"
    assert top["parent_found"]["by"] == "W2ru"
    locators = {loc["code"]: loc["path"] for loc in top["locators"]}
    assert locators["W2ru"] == "..\\b\\sub\\renamed base.vhd"
    assert locators["W2ku"] == str(target)
    assert locators["MacX"] == "file://" + str(target).replace(" ", "%20")
    assert flat(child) == before
    assert cli("check", child).returncode == 0
    assert not setparent_journal_of(child).exists()


def test_relink_then_libvhdi_reads_the_chain(tmp_path):
    child, base = chain(tmp_path)
    before = flat(child)
    os.replace(base, tmp_path / "golden.vhd")
    set_parent(str(child), str(tmp_path / "golden.vhd"))
    skip = libvhdi_unreliable_sectors([child])
    with vhdimount(child, tmp_path / "mnt") as theirs:  # libvhdi follows the parent name
        assert same_except(before, theirs.read_bytes(), skip) == []


def test_refuses_a_different_disk_unless_forced(tmp_path):
    child, base = chain(tmp_path)
    stranger = make_base(tmp_path / "stranger.vhd", "dynamic", SIZE, 512 * KiB)
    fill(stranger, [(0, b"S" * 4096)])
    original = child.read_bytes()
    result = cli("set-parent", child, stranger)
    assert result.returncode == ParentMismatch.exit_code
    assert "unique id" in result.stderr and "--force" in result.stderr
    assert child.read_bytes() == original
    forced = cli("set-parent", child, stranger, "--force")
    assert forced.returncode == 0 and "forced" in forced.stdout
    with open_chain(str(child)) as opened:
        assert opened.layers[1].name.endswith("stranger.vhd")
        assert opened.read(65536, 4096) == b"\0" * 4096 and opened.read(0, 4096) == b"S" * 4096


def test_refuses_wrong_size_self_and_loops(tmp_path):
    child, base = chain(tmp_path)
    bigger = make_base(tmp_path / "bigger.vhd", "dynamic", 2 * SIZE)
    with pytest.raises(ParentMismatch, match="must have the child's size"):
        set_parent(str(child), str(bigger), force=True)
    with pytest.raises(RefusedError, match="its own parent"):
        set_parent(str(child), str(child), force=True)
    grandchild = make_child(child, tmp_path / "grandchild.vhd")
    with pytest.raises(ChainCycle, match="parent loop"):
        set_parent(str(child), str(grandchild), force=True)


def test_locators_longer_than_their_reserved_space(tmp_path):
    child, base = chain(tmp_path / "a")
    deep = tmp_path.joinpath(*["d" * 150 + str(i) for i in range(4)])
    deep.mkdir(parents=True)
    target = deep / "base.vhd"
    os.replace(base, target)
    assert len(str(target).encode("utf-16-le")) > 1024  # more than create reserved
    with Layer(LocalFile(child)) as layer:
        old_locators = [(loc.data_offset, loc.data_length) for loc in layer.header.locators
                        if not loc.is_empty]
        old_end = layer.footer_offset
    old_bytes = child.read_bytes()
    before = flat(child, None) if False else None  # the parent is not reachable yet
    assert before is None
    set_parent(str(child), str(target))
    top = info(child)
    assert {loc["code"]: loc["path"] for loc in top["locators"]}["W2ku"] == str(target)
    new_bytes = child.read_bytes()
    for offset, length in old_locators:  # the old locator data is left as it was
        assert new_bytes[offset:offset + length] == old_bytes[offset:offset + length]
    with Layer(LocalFile(child)) as layer:
        assert layer.footer_offset > old_end
        assert all(loc.data_offset >= old_end for loc in layer.header.locators if not loc.is_empty)
    assert cli("check", child).returncode == 0
    fill(child, [(3 * MiB, b"n" * 4096)])  # new blocks go after the new locator data
    assert cli("check", child).returncode == 0
    assert flat(child)[3 * MiB:3 * MiB + 4096] == b"n" * 4096


def test_mends_a_bad_locator_refuses_other_damage(tmp_path):
    child, base = chain(tmp_path)
    before = flat(child)
    with Layer(LocalFile(child)) as layer:
        header_at = layer.footer.data_offset
        bat_at = layer.header.table_offset
    header = DynamicHeader.parse(header_bytes(child), "x", 0)
    header.locators[0].data_length = 10_000
    with open(child, "r+b") as handle:
        handle.seek(header_at)
        handle.write(header.build())
    assert cli("info", child).returncode == 3
    assert cli("set-parent", child, base).returncode == 0
    assert flat(child) == before
    with open(child, "r+b") as handle:
        handle.seek(bat_at)
        handle.write((0x00FFFFF0).to_bytes(4, "big"))
    result = cli("set-parent", child, base)
    assert result.returncode == RefusedError.exit_code and "check --repair" in result.stderr


def test_killed_at_every_point_leaves_the_old_or_the_new_link(tmp_path):
    origin = tmp_path / "origin"
    child, base = chain(origin)
    before = flat(child)
    old_header = header_bytes(child)
    (origin / "new").mkdir()
    shutil.copy(base, origin / "new" / "moved.vhd")  # the same disk, at a second place
    work = tmp_path / "work"  # one place for every run: the locator paths have one length
    child = work / "child.vhd"
    shutil.copytree(origin, work)
    counted = Faults()
    set_parent(str(child), str(work / "new" / "moved.vhd"), faults=counted)
    new_header = header_bytes(child)
    shutil.rmtree(work)
    assert counted.events >= 6
    for point in range(counted.events):
        shutil.copytree(origin, work)
        got = run_killed(lambda faults: set_parent(str(child), str(work / "new" / "moved.vhd"),
                                                   faults=faults), point)
        assert got == point
        now = header_bytes(child)
        assert now in (old_header, new_header)
        with open_chain(str(child)) as opened:  # either link is whole and reads the same
            parent = opened.links[0].path
            assert opened.read(0, opened.size) == before
        assert (parent == str(work / "new" / "moved.vhd")) == (now == new_header)
        report = check_image(str(child), repair=True)
        assert report.exit_code in (0, 1), report.as_dict()
        assert not setparent_journal_of(child).exists()
        shutil.rmtree(work)


def test_torn_header_write_is_finished_by_check(tmp_path):
    """A crash tearing the header write (first sector new, second old): the journal lets
    check --repair write the whole new header."""
    child, base = chain(tmp_path)
    before = flat(child)
    target = tmp_path / "moved.vhd"
    shutil.copy(base, target)
    old_header = header_bytes(child)
    events = Faults(record=True)
    probe = tmp_path / "probe"
    shutil.copytree(tmp_path, probe, ignore=shutil.ignore_patterns("probe"))
    set_parent(str(probe / "child.vhd"), str(probe / "moved.vhd"), faults=events)
    header_write = events.log.index("write 1024 at 512")
    assert run_killed(lambda faults: set_parent(str(child), str(target), faults=faults),
                      header_write) == header_write
    journal = json.loads(setparent_journal_of(child).read_text())
    new_header = bytes.fromhex(journal["new_header"])
    with open(child, "r+b") as handle:  # only the first sector of the new header landed
        handle.seek(journal["header_offset"])
        handle.write(new_header[:512])
    assert header_bytes(child) not in (old_header, new_header)
    found = cli("check", child)
    assert found.returncode == 4 and "interrupted" in found.stdout
    assert cli("check", child, "--repair").returncode == 1
    assert header_bytes(child) == new_header and not setparent_journal_of(child).exists()
    base.unlink()
    assert flat(child) == before
