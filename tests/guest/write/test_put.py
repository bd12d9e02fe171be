"""vhdfs put: a file, a folder (recursively), standard input, into NTFS, ext4 and FAT32 in
a differencing child, with real mounts (the private vhdfs mount, ntfs-3g) and no root
needed. Every write is read back through vhdfs and through the file system's own tools,
and the parent's bytes never change."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.guest.write.conftest import (
    EXT_CONFIG,
    WELCOME,
    check_base,
    child_of,
    ext_fsck,
    ext_names,
    ext_read,
    ext_stat,
    fat_fsck,
    fat_names,
    fat_read,
    ntfs_read,
    partition_file,
    vhdfs_run,
)


def test_put_a_file_into_ntfs_by_a_windows_path_in_any_case(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    source = tmp_path / "hello.txt"
    source.write_bytes(b"Hello from vhdfs put\r\n" * 100)
    done = vhdfs("put", child, source, "C:\\INETPUB\\WWWROOT\\hello.txt")
    assert done.code == 0, done.err
    assert "wrote /inetpub/wwwroot/hello.txt on volume 2 (NTFS" in done.out
    assert vhdfs("cat", child, "c:/inetpub/wwwroot/HELLO.TXT").raw == source.read_bytes()
    volume = partition_file(child, 2, tmp_path / "p2.ntfs")
    # stored in the folder as it is spelled on disk (not a second "INETPUB"), new name as typed
    assert ntfs_read(volume, "/inetpub/wwwroot/hello.txt") == source.read_bytes()
    listing = vhdfs("ls", child, "/", "--volume", "2").out.split()
    assert "inetpub/" in listing and "INETPUB/" not in listing
    check_base(windows_base)


def test_put_replaces_only_with_force(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    before = vhdfs("cat", child, WELCOME).raw
    new = tmp_path / "new.png"
    new.write_bytes(b"\x89PNG not really" * 300)
    refused = vhdfs("put", child, new, "C:\\inetpub\\wwwroot\\welcome.PNG")
    assert refused.code == 6
    assert refused.err.strip().splitlines() == [
        'vhdfs: error: /inetpub/wwwroot/Welcome.png exists on volume 2 (NTFS "Windows"); use '
        '--force to replace it; nothing was written']
    assert vhdfs("cat", child, WELCOME).raw == before
    assert os.path.getsize(child) < 64 * 1024  # nothing was written into the child
    done = vhdfs("put", child, new, "C:\\inetpub\\wwwroot\\welcome.PNG", "--force")
    assert done.code == 0, done.err
    assert done.out.startswith("replaced /inetpub/wwwroot/Welcome.png")
    assert vhdfs("cat", child, WELCOME).raw == new.read_bytes()
    volume = partition_file(child, 2, tmp_path / "p2.ntfs")
    assert ntfs_read(volume, "/" + WELCOME) == new.read_bytes()
    names = vhdfs("ls", child, "/inetpub/wwwroot").out.split()
    assert names == ["iisstart.htm", "Welcome.png"]  # replaced, not a second name
    check_base(windows_base)


def test_put_a_folder_recursively_into_ntfs(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "empty").mkdir()
    (site / "index.html").write_bytes(b"<h1>v2</h1>")
    (site / "css" / "main.css").write_bytes(b"body{}" * 1000)
    done = vhdfs("put", child, site, "C:\\inetpub\\wwwroot")
    assert done.code == 0, done.err
    assert "wrote 2 file(s) and 3 folder(s) to /inetpub/wwwroot/site" in done.out
    assert vhdfs("ls", child, "/inetpub/wwwroot/site").out.split() == [
        "css/", "empty/", "index.html"]
    volume = partition_file(child, 2, tmp_path / "p2.ntfs")
    assert ntfs_read(volume, "/inetpub/wwwroot/site/css/main.css") == b"body{}" * 1000
    assert ntfs_read(volume, "/inetpub/wwwroot/site/index.html") == b"<h1>v2</h1>"
    check_base(windows_base)


def test_put_into_ext4_keeps_root_ownership_and_the_source_mode(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    done = vhdfs("put", child, script, "/srv/run.sh")
    assert done.code == 0, done.err
    assert vhdfs("cat", child, "/srv/run.sh").raw == script.read_bytes()
    volume = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_read(volume, "/srv/run.sh") == script.read_bytes()
    facts = ext_stat(volume, "/srv/run.sh")
    assert "Mode:  0750" in facts and "User:     0   Group:     0" in facts
    ext_fsck(volume)
    check_base(two_base)


def test_put_force_on_ext4_keeps_the_replaced_files_owner_and_mode(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    path, old, _ = EXT_CONFIG
    new = tmp_path / "app.conf"
    new.write_bytes(b"secret=2\n" * 3)
    new.chmod(0o644)
    assert vhdfs("put", child, new, "/" + path).code == 6
    done = vhdfs("put", child, new, "/" + path, "--force")
    assert done.code == 0, done.err
    volume = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_read(volume, "/" + path) == new.read_bytes()
    assert "Mode:  0600" in ext_stat(volume, "/" + path)  # the old file's mode, not 0644
    names = ext_names(volume, "/etc")
    assert names.count("app.conf") == 1 and not any(n.startswith(".vhdfs") for n in names)
    ext_fsck(volume)
    check_base(two_base)


def test_put_a_folder_into_fat32_by_a_drive_letter_in_any_case(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    site = tmp_path / "Site"
    (site / "Sub").mkdir(parents=True)
    (site / "Long File Name.txt").write_bytes(b"long\n")
    (site / "Sub" / "b.bin").write_bytes(bytes(range(256)) * 50)
    done = vhdfs("put", child, site, "D:\\docs")  # the folder is "Docs" on disk
    assert done.code == 0, done.err
    assert "to /Docs/Site on volume 1 (FAT32" in done.out
    assert vhdfs("cat", child, "d:\\DOCS\\site\\sub\\B.BIN").raw == bytes(range(256)) * 50
    volume = partition_file(child, 1, tmp_path / "p1.fat")
    assert fat_read(volume, "/Docs/Site/Long File Name.txt", tmp_path) == b"long\n"
    assert "Long File Name.txt" in fat_names(volume, "/Docs/Site")
    fat_fsck(volume)
    check_base(two_base)


def test_put_force_on_fat32_replaces_in_place(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    new = tmp_path / "r.txt"
    new.write_bytes(b"annual\n" * 1000)
    assert vhdfs("put", child, new, "/DOCS/REPORT.TXT").code == 6
    done = vhdfs("put", child, new, "/DOCS/REPORT.TXT", "--force")
    assert done.code == 0, done.err
    volume = partition_file(child, 1, tmp_path / "p1.fat")
    assert fat_read(volume, "/Docs/Report.txt", tmp_path) == new.read_bytes()
    assert "vhdfs" not in fat_names(volume, "/Docs")  # no temporary name left
    fat_fsck(volume)


def test_put_from_standard_input(two_base, tmp_path):
    child = child_of(two_base, tmp_path)
    data = os.urandom(300_000)
    done = vhdfs_run("put", child, "-", "/etc/motd", stdin=data)
    assert done.returncode == 0, done.stderr
    assert b"(292.97 KiB from -)" in done.stdout
    volume = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_read(volume, "/etc/motd") == data
    assert "Mode:  0644" in ext_stat(volume, "/etc/motd")
    into_folder = vhdfs_run("put", child, "-", "/etc", stdin=b"x")
    assert into_folder.returncode == 2
    assert b"/etc is a folder on volume 2" in into_folder.stderr
    check_base(two_base)


def test_put_on_a_disk_without_partitions_writes_disk_raw(whole_fat_base, tmp_path, vhdfs):
    child = child_of(whole_fat_base, tmp_path)
    source = tmp_path / "b.txt"
    source.write_bytes(b"b\n")
    done = vhdfs("put", child, source, "/b.txt")
    assert done.code == 0, done.err
    volume = partition_file(child, 0, tmp_path / "disk.fat")
    assert fat_read(volume, "/b.txt", tmp_path) == b"b\n"
    fat_fsck(volume)
    check_base(whole_fat_base)


def test_the_writes_land_in_the_child_only_and_changes_lists_them(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    source = tmp_path / "new.txt"
    source.write_bytes(b"new\n")
    assert vhdfs("put", child, source, "/srv/new.txt").code == 0
    assert vhdfs("mkdir", child, "/srv/made").code == 0
    check_base(two_base)
    report = json.loads(vhdfs("changes", child, "--json").out)
    (ext,) = [v for v in report["volumes"] if v["volume"] == 2]
    added = {f["path"] for f in ext["files"] if f["status"] == "added"}
    assert added == {"/srv/new.txt", "/srv/made"}
    assert {f["path"] for f in ext["files"] if f["status"] == "modified"} == {"/srv"}
    assert not [v for v in report["volumes"] if v["volume"] == 1]  # FAT untouched


def test_put_json_result(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    site = tmp_path / "conf.d"
    site.mkdir()
    (site / "a.conf").write_bytes(b"a=1\n")
    done = vhdfs("put", child, site, "/etc", "--json")
    assert done.code == 0, done.err
    result = json.loads(done.out)
    assert set(result) == {"image", "chain", "volume", "file_system", "path", "files",
                           "folders", "bytes", "seconds", "warnings"}
    assert (result["volume"], result["file_system"], result["path"]) == (2, "ext4",
                                                                        "/etc/conf.d")
    assert [Path(p).resolve() for p in result["chain"]] == [child, two_base.path]
    assert result["files"] == [{"path": "/etc/conf.d/a.conf", "source": str(site / "a.conf"),
                                "bytes": 4, "replaced": False}]
    assert result["folders"] == ["/etc/conf.d"] and result["bytes"] == 4


def test_put_progress_json_lines_end_at_100(two_base, tmp_path):
    child = child_of(two_base, tmp_path)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    done = vhdfs_run("put", child, source, "/srv/big.bin", "--progress", "json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert lines[-1]["percent"] == 100 and lines[-1]["done"] == lines[-1]["total"] == 3 * 2**20


def test_put_leaves_nothing_behind_in_the_temporary_folder(two_base, tmp_path):
    """The private mount's folder (and standard input's copy) are removed."""
    child = child_of(two_base, tmp_path)
    before = set(os.listdir(tmp_path))
    source = tmp_path / "x"
    source.write_bytes(b"x")
    assert vhdfs_run("put", child, "-", "/srv/x", stdin=b"x", env={"TMPDIR": str(tmp_path)}
                     ).returncode == 0
    assert set(os.listdir(tmp_path)) == before | {"x"}


def test_verify_still_passes_after_replacing_welcome_png(windows_base, tmp_path, vhdfs):
    """The demo's step: ntfs-3g unmounts cleanly (the volume's dirty flag clear), the image
    still passes every check of verify."""
    child = child_of(windows_base, tmp_path)
    new = tmp_path / "new-Welcome.png"
    new.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(5000))
    assert vhdfs("put", child, new, "C:\\inetpub\\wwwroot\\Welcome.png", "--force").code == 0
    done = vhdfs("verify", child)
    assert done.code == 0, done.out
    assert "ok    clean-shutdown: volume 2 is clean (NTFS dirty flag clear)" in done.out


def test_put_into_a_vhdx_checkpoint(two_base, tmp_path, vhdfs):
    base = tmp_path / "base.vhdx"
    assert vhdfs("convert", two_base.path, base, "--to", "vhdx").code == 0
    checkpoint = tmp_path / "cp.avhdx"
    assert vhdfs("create", checkpoint, "--parent", base).code == 0
    source = tmp_path / "x"
    source.write_bytes(b"in a checkpoint\n")
    done = vhdfs("put", checkpoint, source, "/srv/x")
    assert done.code == 0, done.err
    assert vhdfs("cat", checkpoint, "/srv/x").raw == b"in a checkpoint\n"
    assert vhdfs("ls", base, "/srv").out.split() == ["data.bin"]
