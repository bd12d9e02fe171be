"""vhdfs rm and vhdfs mkdir on NTFS, ext4 and FAT32 children: files, folders with -r, the
volume root refused, mkdir and mkdir -p; each change read back by the file system's own
tools, and the parent untouched."""

from __future__ import annotations

import json

import pytest

from tests.guest.write.conftest import (
    WELCOME,
    check_base,
    child_of,
    ext_fsck,
    ext_names,
    fat_fsck,
    fat_names,
    partition_file,
)


def test_rm_a_file_on_ntfs_by_a_windows_path(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    done = vhdfs("rm", child, "C:\\InetPub\\wwwroot\\WELCOME.png")
    assert done.code == 0, done.err
    assert done.out.strip() == ('removed /inetpub/wwwroot/Welcome.png on volume 2 (NTFS '
                                f'"Windows") from {child}')
    assert vhdfs("ls", child, "/inetpub/wwwroot").out.split() == ["iisstart.htm"]
    missing = vhdfs("cat", child, "/" + WELCOME)
    assert missing.code == 1 and "not found" in missing.err
    check_base(windows_base)


def test_rm_of_a_folder_needs_r_and_then_removes_everything_in_it(windows_base, tmp_path,
                                                                  vhdfs):
    child = child_of(windows_base, tmp_path)
    refused = vhdfs("rm", child, "/inetpub")
    assert refused.code == 6
    assert refused.err.strip() == ('vhdfs: error: /inetpub is a folder on volume 2 (NTFS '
                                   '"Windows"); use -r to remove it and everything in it')
    done = vhdfs("rm", child, "/inetpub", "-r", "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert set(result) == {"image", "chain", "volume", "file_system", "path", "removed",
                           "bytes", "seconds", "warnings"}
    assert [(r["path"], r["kind"]) for r in result["removed"]] == [
        ("/inetpub/wwwroot/iisstart.htm", "file"), ("/inetpub/wwwroot/Welcome.png", "file"),
        ("/inetpub/wwwroot", "dir"), ("/inetpub", "dir")]
    assert "inetpub/" not in vhdfs("ls", child, "/", "--volume", "2").out.split()
    check_base(windows_base)


@pytest.mark.parametrize("path", ["/", "C:\\", "\\"])
def test_rm_refuses_the_volume_root(windows_base, tmp_path, vhdfs, path):
    child = child_of(windows_base, tmp_path)
    done = vhdfs("rm", child, path, "-r", "--volume", "2")
    assert done.code == 6
    assert "the root folder of a volume cannot be removed" in done.err


def test_rm_of_what_is_not_there(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    done = vhdfs("rm", child, "/etc/nothing-here")
    assert done.code == 1
    assert done.err.strip().startswith("vhdfs: error: /etc/nothing-here: not found on any "
                                       "volume (searched volume 1")


def test_rm_r_on_ext4_and_fat32(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    assert vhdfs("rm", child, "-r", "/srv").code == 0
    assert vhdfs("rm", child, "d:\\docs\\report.TXT").code == 0
    assert vhdfs("rm", child, "/Docs").code == 6  # a folder, even an empty one, needs -r
    assert vhdfs("rm", child, "-r", "/Docs").code == 0
    ext = partition_file(child, 2, tmp_path / "p2.ext4")
    assert "srv" not in ext_names(ext, "/")
    ext_fsck(ext)
    fat = partition_file(child, 1, tmp_path / "p1.fat")
    assert "Docs" not in fat_names(fat, "/") and "README" in fat_names(fat, "/")
    fat_fsck(fat)
    check_base(two_base)


def test_mkdir_and_mkdir_p(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    missing = vhdfs("mkdir", child, "/srv/a/b")
    assert missing.code == 1
    assert missing.err.strip() == ('vhdfs: error: /srv/a: no such folder on volume 2 (ext4 '
                                   '"linux"); use -p to create it too')
    assert vhdfs("mkdir", child, "/srv/a").code == 0
    done = vhdfs("mkdir", child, "-p", "/srv/a/b/c", "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert set(result) == {"image", "chain", "volume", "file_system", "path", "folders",
                           "seconds", "warnings"}
    assert result["folders"] == ["/srv/a/b", "/srv/a/b/c"]
    again = vhdfs("mkdir", child, "-p", "/srv/a/b/c")
    assert again.code == 0 and "exists already; nothing was written" in again.out
    exists = vhdfs("mkdir", child, "/srv/a")
    assert exists.code == 6 and "/srv/a exists on volume 2" in exists.err
    on_a_file = vhdfs("mkdir", child, "-p", "/etc/hostname/x")
    assert on_a_file.code == 1 and "/etc/hostname on volume 2" in on_a_file.err
    ext = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_names(ext, "/srv/a/b") == [".", "..", "c"]
    ext_fsck(ext)
    check_base(two_base)


def test_mkdir_p_on_fat32_and_ntfs_in_the_case_on_disk(two_base, windows_base, tmp_path,
                                                       vhdfs):
    child = child_of(two_base, tmp_path)
    assert vhdfs("mkdir", child, "-p", "D:\\DOCS\\New Folder\\Deeper").code == 0
    fat = partition_file(child, 1, tmp_path / "p1.fat")
    assert "New Folder" in fat_names(fat, "/Docs")
    fat_fsck(fat)
    win = child_of(windows_base, tmp_path, "win-child.vhd")
    done = vhdfs("mkdir", win, "-p", "c:\\INETPUB\\logs\\W3SVC1")
    assert done.code == 0, done.err
    assert done.out.startswith("made /inetpub/logs/W3SVC1 on volume 2")
    assert vhdfs("ls", win, "/inetpub").out.split() == ["logs/", "wwwroot/"]
