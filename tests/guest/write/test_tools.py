"""The ext and FAT writers driving debugfs and mtools on plain image files (no mount): names
that need quoting, a replacement that keeps owner and mode and leaves no temporary name, a
failure that leaves the old file, and `apply`'s one line when a change fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.common import MiB, new_sparse_file
from tests.fixtures.ext import build_ext4_volume
from tests.fixtures.fat import build_fat32_volume
from tests.guest.write.conftest import ext_fsck, ext_names, ext_read, ext_stat, fat_fsck, fat_read
from vhdfs.guest.write import MakeDir, Outcome, Plan, Remove, Target, WriteFailed, WriteFile, apply
from vhdfs.guest.write.ext import ExtWriter
from vhdfs.guest.write.fat import FatWriter
from vhdfs.guest.write.plan import Existing

EXT = Target(2, "ext4", 'volume 2 (ext4 "t")', "p2", False)
FAT = Target(1, "FAT32", 'volume 1 (FAT32 "T")', "p1", True)


@pytest.fixture
def ext_image(tmp_path) -> Path:
    image = tmp_path / "ext.img"
    build_ext4_volume(image, 8 * MiB, {"etc/shadow": (b"root:*:1::::::\n", 0o640)},
                      fs_uuid="1d1f6a2c-3b4e-4f60-8a9b-0c1d2e3f4a5b")
    subprocess.run(["debugfs", "-w", "-R", 'sif "/etc/shadow" gid 42', str(image)],
                   check=True, capture_output=True)
    return image


@pytest.fixture
def fat_image(tmp_path) -> Path:
    image = tmp_path / "fat.img"
    build_fat32_volume(image, 40 * MiB, {"Docs/Old.txt": b"old\n"}, label="T",
                       volume_id=0x01020304, hidden_sectors=0)
    return image


def source(tmp_path: Path, data: bytes, name: str = "src", mode: int = 0o644) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def no_progress(amount: int) -> None:
    pass


def test_debugfs_gets_names_with_quotes_spaces_and_backslashes(ext_image, tmp_path):
    writer = ExtWriter(ext_image, tmp_path)
    odd = 'say "hi" \\ there'
    writer.make_dir(MakeDir(("srv", )))
    writer.write_file(WriteFile(("srv", odd), source(tmp_path, b"odd\n"), 4), no_progress)
    assert ext_names(ext_image, "/srv") == [".", "..", odd]
    assert ext_read(ext_image, f'/srv/{odd.replace(chr(34), chr(34) * 2)}') == b"odd\n"
    writer.remove(Remove(("srv", odd), False))
    writer.remove(Remove(("srv",), True))
    assert "srv" not in ext_names(ext_image, "/")
    assert not list(tmp_path.glob("source-*"))  # the links to the sources are gone
    ext_fsck(ext_image)


def test_debugfs_replacement_keeps_owner_and_mode(ext_image, tmp_path):
    writer = ExtWriter(ext_image, tmp_path)
    new = source(tmp_path, b"root:x:2::::::\n" * 10, mode=0o666)
    writer.write_file(WriteFile(("etc", "shadow"), new, new.stat().st_size,
                                Existing(0o640, 0, 42, 15)), no_progress)
    assert ext_read(ext_image, "/etc/shadow") == new.read_bytes()
    facts = ext_stat(ext_image, "/etc/shadow")
    assert "Mode:  0640" in facts and "Group:    42" in facts and "Links: 1" in facts
    assert ext_names(ext_image, "/etc") == [".", "..", "shadow"]
    ext_fsck(ext_image)


def test_a_debugfs_failure_leaves_the_old_file_and_no_temporary_one(ext_image, tmp_path):
    writer = ExtWriter(ext_image, tmp_path)
    huge = source(tmp_path, b"\x01" * (12 * MiB))
    plan = Plan(EXT, ("etc",), [MakeDir(("etc", "new")),
                                WriteFile(("etc", "shadow"), huge, 12 * MiB,
                                          Existing(0o640, 0, 42, 15)),
                                MakeDir(("etc", "never"))])
    outcome = Outcome()
    with pytest.raises(WriteFailed) as failed:
        apply(plan, writer, no_progress, outcome)
    assert str(failed.value) == (
        'volume 2 (ext4 "t"): writing /etc/shadow failed: debugfs: write: Could not allocate '
        "block in ext2 filesystem; /etc/shadow is unchanged; before it: 1 folder made; the 1 "
        "change after it were not made")
    assert outcome.done == [MakeDir(("etc", "new"))]
    assert ext_read(ext_image, "/etc/shadow") == b"root:*:1::::::\n"
    assert ext_names(ext_image, "/etc") == [".", "..", "shadow", "new"]
    ext_fsck(ext_image)


def test_mtools_replacement_and_names(fat_image, tmp_path):
    writer = FatWriter(fat_image)
    writer.make_dir(MakeDir(("Docs", "Ünïcode Folder")))
    writer.write_file(WriteFile(("Docs", "Ünïcode Folder", "long name, with comma.txt"),
                                source(tmp_path, b"long\n"), 5), no_progress)
    new = source(tmp_path, b"new\n" * 1000, "new")
    writer.write_file(WriteFile(("Docs", "Old.txt"), new, 4000, Existing(0, 0, 0, 4)),
                      no_progress)
    assert fat_read(fat_image, "/Docs/Old.txt", tmp_path) == new.read_bytes()
    assert fat_read(fat_image, "/Docs/Ünïcode Folder/long name, with comma.txt",
                    tmp_path) == b"long\n"
    listing = subprocess.run(["mdir", "-b", "-i", str(fat_image), "::/Docs"], text=True,
                             capture_output=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "vhdfs" not in listing
    fat_fsck(fat_image)


def test_a_full_fat_volume_keeps_the_old_file(tmp_path):
    image = tmp_path / "small.img"
    new_sparse_file(image, 2 * MiB)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
    subprocess.run(["mcopy", "-i", str(image), str(source(tmp_path, b"keep\n", "k")),
                    "::/KEEP.TXT"], check=True, capture_output=True,
                   env={"MTOOLS_SKIP_CHECK": "1"})
    huge = source(tmp_path, b"\x02" * (4 * MiB), "huge")
    plan = Plan(FAT, ("KEEP.TXT",), [WriteFile(("KEEP.TXT",), huge, 4 * MiB,
                                               Existing(0, 0, 0, 5))])
    with pytest.raises(WriteFailed, match=r"writing /KEEP.TXT failed: mcopy: .*/KEEP.TXT is "
                       "unchanged; nothing was changed before it$"):
        apply(plan, FatWriter(image), no_progress, Outcome())
    assert fat_read(image, "/KEEP.TXT", tmp_path) == b"keep\n"
    fat_fsck(image)
