"""Planning a guest write through the chain, with nothing mounted (vhdfs.guest.write.plan):
names as stored on disk, the volume chosen, every refusal before any write. A FAT32 +
ext4 disk built without mounts (mkfs.vfat + mtools, mkfs.ext4 -d)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guest.write.conftest import child_of
from vhdfs.errors import RefusedError, UsageError
from vhdfs.guest.errors import AmbiguousPath, GuestPathNotFound
from vhdfs.guest.volumes import open_volumes
from vhdfs.guest.write import MakeDir, Remove, WriteFile, plan_mkdir, plan_put, plan_rm
from vhdfs.guest.write.plan import check_new_name, target_of
from vhdfs.resolve import OpenOptions, open_chain


@pytest.fixture
def volumes(two_base, tmp_path):
    with open_chain(str(child_of(two_base, tmp_path)), OpenOptions()) as chain:
        yield open_volumes(chain)


def local_tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_a_file_into_an_existing_folder_spelled_in_another_case(volumes, tmp_path):
    source = tmp_path / "Notes.txt"
    source.write_bytes(b"12345")
    plan = plan_put(volumes, source, "Notes.txt", "d:\\DOCS", None, force=False)
    assert (plan.target.number, plan.target.fs_type, plan.target.file) == (1, "FAT32", "p1")
    assert plan.changes == [WriteFile(("Docs", "Notes.txt"), source, 5)]


def test_a_file_under_a_new_name_and_its_replacement(volumes, tmp_path):
    source = tmp_path / "x"
    source.write_bytes(b"abc")
    plan = plan_put(volumes, source, "x", "/etc/motd", None, force=False)
    assert plan.changes == [WriteFile(("etc", "motd"), source, 3)]
    with pytest.raises(RefusedError, match="/etc/hostname exists on volume 2"):
        plan_put(volumes, source, "x", "/etc/hostname", None, force=False)
    (change,) = plan_put(volumes, source, "x", "/etc/hostname", None, force=True).changes
    assert isinstance(change, WriteFile) and change.replaces is not None
    assert (change.replaces.uid, change.replaces.gid, change.replaces.mode) == (0, 0, 0o644)


def test_a_folder_merges_folders_and_lists_every_file_in_the_way(volumes, tmp_path):
    src = local_tree(tmp_path / "etc", {"hostname": b"h", "app.conf": b"c", "new/x": b"x"})
    with pytest.raises(RefusedError, match=r"/etc/app.conf exists .* \(and 1 more\)"):
        plan_put(volumes, src, "etc", "/", 2, force=False)
    plan = plan_put(volumes, src, "etc", "/", 2, force=True)
    assert [(type(c).__name__, c.path) for c in plan.changes] == [
        ("WriteFile", ("etc", "app.conf")), ("WriteFile", ("etc", "hostname")),
        ("MakeDir", ("etc", "new")), ("WriteFile", ("etc", "new", "x"))]
    assert plan.bytes == 3


def test_a_folder_and_a_file_of_one_name_refuse_each_other(volumes, tmp_path):
    src = local_tree(tmp_path / "srv", {"data.bin/inner": b"x"})
    with pytest.raises(RefusedError, match="/srv/data.bin is a file on volume 2"):
        plan_put(volumes, src, "srv", "/", 2, force=True)
    file = local_tree(tmp_path / "d", {"srv": b"x"}) / "srv"
    with pytest.raises(RefusedError, match="/srv is a folder on volume 2 .* a file"):
        plan_put(volumes, file, "srv", "/", 2, force=True)
    # into the root, the folder d keeps its name: /d/srv is new, no conflict
    plan = plan_put(volumes, tmp_path / "d", "d", "/", 2, force=False)
    assert [c.path for c in plan.changes] == [("d",), ("d", "srv")]


def test_the_volume_follows_the_path_and_ambiguity_asks_for_volume(volumes, tmp_path):
    source = tmp_path / "x"
    source.write_bytes(b"x")
    assert plan_put(volumes, source, "x", "/srv/x", None, force=False).target.number == 2
    assert plan_put(volumes, source, "x", "/docs/x", None, force=False).target.number == 1
    with pytest.raises(AmbiguousPath, match="choose one with --volume N"):
        plan_put(volumes, source, "x", "/x", None, force=False)


def test_missing_folders(volumes, tmp_path):
    source = tmp_path / "x"
    source.write_bytes(b"x")
    with pytest.raises(GuestPathNotFound, match="/srv/a: no such folder"):
        plan_put(volumes, source, "x", "/srv/a/b/x", None, force=False)
    with pytest.raises(GuestPathNotFound, match="/etc/hostname on volume 2 .* is a file, not a"):
        plan_put(volumes, source, "x", "/etc/hostname/x", None, force=False)
    with pytest.raises(UsageError, match="name the file to write standard input to"):
        plan_put(volumes, source, None, "/srv", None, force=False)


def test_mkdir_plans(volumes):
    assert plan_mkdir(volumes, "/srv/a", None, parents=False).changes == [MakeDir(("srv", "a"))]
    assert plan_mkdir(volumes, "D:\\docs\\A\\B", None, parents=True).changes == [
        MakeDir(("Docs", "A")), MakeDir(("Docs", "A", "B"))]
    assert plan_mkdir(volumes, "/srv", 2, parents=True).changes == []
    with pytest.raises(RefusedError, match="exists on volume 2"):
        plan_mkdir(volumes, "/srv", 2, parents=False)


def test_rm_plans_remove_the_contents_first(volumes):
    plan = plan_rm(volumes, "/DOCS", None, recursive=True)
    assert plan.changes == [Remove(("Docs", "Report.txt"), False, 10),
                            Remove(("Docs",), True)]
    with pytest.raises(RefusedError, match="use -r"):
        plan_rm(volumes, "/docs", None, recursive=False)
    with pytest.raises(RefusedError, match="root folder"):
        plan_rm(volumes, "C:\\", 1, recursive=True)


@pytest.mark.parametrize(("volume", "name", "allowed"), [
    (1, "Report 2024.txt", True), (1, "ünïcödé", True), (1, "a?b", False),
    (1, "a|b", False), (1, "nul", False), (1, "lpt1.txt", False), (1, "x" * 256, False),
    (1, "tab\there", False), (2, "a:b*c?", True), (2, "x" * 255, True), (2, "é" * 128, False),
])
def test_new_names(volumes, volume, name, allowed):
    target = target_of(volumes.get(volume))
    if allowed:
        check_new_name(target, name)
    else:
        with pytest.raises(UsageError):
            check_new_name(target, name)
