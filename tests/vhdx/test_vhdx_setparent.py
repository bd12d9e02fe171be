"""vhdfs set-parent of an .avhdx: the parent locator rewritten through the child's log
(atomic), identity by DataWriteGuid (--force), refusals, libvhdi reads the re-linked chain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from vhdxwriter import METADATA_OFFSET, Vhdx, parent_locator_for, patch, write_vhdx

from tests.ops.conftest import run_killed
from tests.tooling import vhdimount
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.setparent import set_parent
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import build
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.layer import VhdxLayer
from vhdfs.vhdx.metadata import with_item

MiB = 1 << 20
SIZE = 8 * MiB


def vhdfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def locator(path: Path) -> dict[str, str]:
    with VhdxLayer(LocalFile(path)) as layer:
        return dict(layer.locator)


def chain(folder: Path) -> tuple[Path, Path, bytes]:
    """base.vhdx with data and child.avhdx over it with more; (child, base, flat disk)."""
    base = folder / "base.vhdx"
    create_vhdx(base, SIZE, block_size=MiB)
    with open_chain(str(base), writable=True) as opened:
        opened.write(0, b"B" * 3 * MiB)
    child = folder / "child.avhdx"
    with open_chain(str(base)) as opened:
        create_vhdx_differencing(child, base, opened.top)
    with open_chain(str(child), writable=True) as opened:
        opened.write(4096, b"C" * 8192)
        return child, base, opened.read(0, SIZE)


def flat(path: Path) -> bytes:
    with open_chain(str(path)) as opened:
        return opened.read(0, opened.size)


def test_relink_after_move_and_rename(tmp_path):
    child, base, wanted = chain(tmp_path)
    (tmp_path / "golden").mkdir()
    moved = tmp_path / "golden" / "base-2024.vhdx"
    base.rename(moved)
    lost = vhdfs("info", child)
    assert lost.returncode == 4 and "vhdfs set-parent" in lost.stderr
    with VhdxLayer(LocalFile(child)) as layer:
        child_id = layer.unique_id
    done = vhdfs("set-parent", child, moved)
    assert done.returncode == 0, done.stderr
    assert f"re-linked {child} to {moved}" in done.stdout and "parent name" not in done.stdout
    assert "locator relative_path .\\golden\\base-2024.vhdx" in done.stdout
    values = locator(child)
    assert values["relative_path"] == ".\\golden\\base-2024.vhdx"
    assert values["volume_path"] == str(moved) and values["absolute_win32_path"].endswith(
        "\\golden\\base-2024.vhdx")
    with VhdxLayer(LocalFile(moved)) as parent:
        assert values["parent_linkage"] == "{" + fmt.guid_text(parent.unique_id).lower() + "}"
    with open_chain(str(child)) as opened:
        assert opened.links[0].found_by == "relative_path"
        assert opened.read(0, SIZE) == wanted
        assert opened.top.unique_id == child_id  # only metadata changed: not the data's id
        assert opened.top.describe()["log"] == "clean"
    assert vhdfs("check", child).returncode == 0


def test_libvhdi_reads_the_relinked_chain(tmp_path):
    """libvhdi takes the last component of absolute_win32_path, next to the child."""
    child, base, wanted = chain(tmp_path)
    renamed = tmp_path / "renamed.vhdx"
    base.rename(renamed)
    assert vhdfs("set-parent", child, renamed).returncode == 0
    with vhdimount(child, tmp_path / "mnt") as theirs:
        assert theirs.read_bytes() == wanted


def test_a_different_or_rewritten_parent_needs_force(tmp_path):
    child, base, wanted = chain(tmp_path)
    other = tmp_path / "other.vhdx"
    create_vhdx(other, SIZE, block_size=MiB)
    before = child.read_bytes()
    refused = vhdfs("set-parent", child, other)
    assert refused.returncode == 4 and "--force" in refused.stderr
    assert "DataWriteGuid" in refused.stderr and child.read_bytes() == before
    with open_chain(str(base), writable=True) as opened:  # a write gives the base a new id
        opened.write(7 * MiB, b"late" * 128)
    assert vhdfs("info", child).returncode == 4
    refused = vhdfs("set-parent", child, base)
    assert refused.returncode == 4 and "written to since" in refused.stderr
    forced = vhdfs("set-parent", child, base, "--force", "--json")
    assert forced.returncode == 0 and '"forced": true' in forced.stdout
    assert flat(child)[:3 * MiB] == wanted[:3 * MiB]


def test_refusals(tmp_path):
    child, base, _ = chain(tmp_path)
    before = child.read_bytes()
    small = tmp_path / "small.vhdx"
    create_vhdx(small, SIZE // 2, block_size=MiB)
    four_k = tmp_path / "4k.vhdx"
    create_vhdx(four_k, SIZE, block_size=MiB, logical_sector_size=4096)
    vhd = tmp_path / "base.vhd"
    assert vhdfs("create", vhd, "--size", "8M").returncode == 0
    grandchild = tmp_path / "gc.avhdx"
    with open_chain(str(child)) as opened:
        create_vhdx_differencing(grandchild, child, opened.top)
    for parent, code, text in [(small, 4, "must have the child's size"),
                               (four_k, 4, "sector size"),
                               (vhd, 4, "can only have a VHDX parent"),
                               (child, 6, "is the child itself"),
                               (grandchild, 4, "parent loop")]:
        done = vhdfs("set-parent", child, parent, "--force")
        assert done.returncode == code and text in done.stderr, (parent, done.stderr)
        assert done.stderr.count("\n") == 1
    not_child = vhdfs("set-parent", base, small)
    assert not_child.returncode == 2 and "not a differencing child" in not_child.stderr
    assert child.read_bytes() == before


def test_linkage2_dropped_other_keys_kept(tmp_path):
    parent = Vhdx(size=SIZE)
    write_vhdx(tmp_path / "base.vhdx", parent)
    values = parent_locator_for(parent.data_write_guid, relative_path=".\\gone.vhdx")
    values["parent_linkage2"] = "{00000000-1111-2222-3333-444444444444}"
    values["hyperv_note"] = "kept"
    child = Vhdx(size=SIZE, parent_locator=values)
    path = write_vhdx(tmp_path / "c.avhdx", child)
    done = vhdfs("set-parent", path, tmp_path / "base.vhdx")
    assert done.returncode == 0, done.stderr
    after = locator(path)
    assert "parent_linkage2" not in after and after["hyperv_note"] == "kept"
    assert after["relative_path"] == ".\\base.vhdx"


def test_a_locator_in_the_way_of_other_items_moves_after_them(tmp_path):
    """A longer locator than the space before the next item goes after the last item; the
    other items stay where they are."""
    child, base, wanted = chain(tmp_path)
    raw = child.read_bytes()[METADATA_OFFSET:METADATA_OFFSET + MiB]
    mark = fmt.guid("11111111-2222-3333-4444-555555555555")
    patch(child, METADATA_OFFSET, with_item(raw, mark, b"another tool's item", fmt.META_IS_USER))
    deep = tmp_path / ("a-much-longer-folder-name-" * 8)
    deep.mkdir()
    moved = deep / "base.vhdx"
    base.rename(moved)
    assert vhdfs("set-parent", child, moved).returncode == 0
    with VhdxLayer(LocalFile(child)) as layer:
        assert layer.metadata.item(mark).value == b"another tool's item"
    assert flat(child) == wanted


def test_killed_at_every_point_leaves_the_old_or_the_new_link(tmp_path):
    origin = tmp_path / "origin"
    origin.mkdir()
    child, base, wanted = chain(origin)
    renamed = origin / "renamed.vhdx"
    shutil.copyfile(base, renamed)  # both names hold the parent: either link reads the same
    old = locator(child)
    counted = Faults(record=True)
    probe = tmp_path / "probe"
    shutil.copytree(origin, probe)
    set_parent(str(probe / child.name), str(probe / renamed.name), faults=counted)
    new = locator(probe / child.name)
    assert new != old and counted.events > 5
    for point in range(counted.events):
        work = tmp_path / f"kill-{point}"
        shutil.copytree(origin, work)
        assert run_killed(lambda faults, work=work: set_parent(
            str(work / child.name), str(work / renamed.name), faults=faults), point) == point
        got = locator(work / child.name)
        expected_new = {k: v.replace(str(probe), str(work)).replace(
            str(probe).replace("/", "\\"), str(work).replace("/", "\\")) for k, v in new.items()}
        assert got in (old, expected_new), counted.log[point]  # (a copy keeps its old paths)
        assert flat(work / child.name) == wanted
        shutil.rmtree(work)


def test_the_locator_item_is_the_one_create_writes(tmp_path):
    """set-parent to the parent it has changes nothing but the paths' form."""
    child, base, _ = chain(tmp_path)
    with VhdxLayer(LocalFile(base)) as parent:
        expected = build.parent_locator_values(parent.unique_id, tmp_path, base)
    assert vhdfs("set-parent", child, base).returncode == 0
    assert locator(child) == expected
