"""Every refusal and failure of put, rm and mkdir is one line with its exit code, and leaves
the child a valid VHD: a busy image (9), a base without --force (6), something in the way
(6), a missing folder (1), a name the file system cannot hold (2), a file system vhdfs does
not write (3), a missing tool (1, naming the Debian package), the tool's own failure (1,
with its words and the state of the guest), reading options that do not apply (2)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.common import SECTOR, MiB
from tests.fixtures.ext import build_ext4_volume
from tests.fixtures.partitions import ALIGN, assemble
from tests.guest.write.conftest import (
    Base,
    _base,
    check_base,
    child_of,
    ext_fsck,
    ext_names,
    fat_fsck,
    partition_file,
    sha256_file,
    vhdfs_run,
)
from tests.hostile.conftest import errorfs
from tests.tooling import force_unmount
from vhdfs.cli import main
from vhdfs.guest.volumes import open_volumes
from vhdfs.guest.write import tools
from vhdfs.resolve import OpenOptions, open_chain

NTFS_DATA = 0x80


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("vhdfs: error: "), lines
    return lines[0]


def test_busy_while_the_child_is_mounted_rw(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", "--rw", str(child), str(mnt)]) == 0
    try:
        source = tmp_path / "x"
        source.write_bytes(b"x")
        for argv in (["put", child, source, "/srv/x"], ["rm", child, "/etc/hostname"],
                     ["mkdir", child, "/srv/new"]):
            done = vhdfs(*argv)
            assert done.code == 9, done.err
            line = one_error_line(done.err)
            assert f"{child}: in use: vhdfs mount --rw" in line and "is writing it" in line
        parent_busy = vhdfs("put", child_of(two_base, tmp_path, "other.vhd"), source, "/x",
                            "--volume", "2")
        assert parent_busy.code == 0, parent_busy.err  # the parent is only read: shared
    finally:
        assert main(["umount", str(mnt)]) == 0
        force_unmount(mnt)
    check_base(two_base)


def test_busy_while_the_parent_is_written(two_base, tmp_path, vhdfs):
    base = tmp_path / "base.vhd"
    shutil.copyfile(two_base.path, base)
    child = child_of(Base(base, ""), tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert main(["mount", "--rw", str(base), str(mnt)]) == 0
    try:
        done = vhdfs("mkdir", child, "/srv/new")
        assert done.code == 9
        assert f"{base}: in use: vhdfs mount --rw" in one_error_line(done.err)
    finally:
        assert main(["umount", str(mnt)]) == 0


def test_a_base_needs_force(two_base, tmp_path, vhdfs):
    base = tmp_path / "base.vhd"
    shutil.copyfile(two_base.path, base)
    before = sha256_file(base)
    done = vhdfs("mkdir", base, "/srv/new")
    assert done.code == 6
    assert one_error_line(done.err) == (
        f"vhdfs: error: {base}: is not a differencing disk (its chain's only layer); writing "
        "into it changes what every child of it reads: create a child and write there (vhdfs "
        f"create child.vhd --parent {base}), or pass --force to write into it anyway")
    assert sha256_file(base) == before
    assert vhdfs("mkdir", base, "/srv/new", "--force").code == 0
    assert "new/" in vhdfs("ls", base, "/srv").out.split()


def test_writing_a_parent_warns_of_its_children(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    grandchild = child_of(Base(child, ""), tmp_path, "grandchild.vhd")
    done = vhdfs("mkdir", child, "/srv/new")
    assert done.code == 0
    assert "vhdfs: warning:" in done.err and str(grandchild) in done.err


def test_missing_folder_and_ambiguous_volume(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    source = tmp_path / "x"
    source.write_bytes(b"x")
    missing = vhdfs("put", child, source, "/srv/no/such/x")
    assert missing.code == 1
    assert one_error_line(missing.err) == (
        'vhdfs: error: /srv/no: no such folder on volume 2 (ext4 "linux"); create it first: '
        "vhdfs mkdir -p IMAGE FOLDER")
    ambiguous = vhdfs("put", child, source, "/x.txt")
    assert ambiguous.code == 2
    assert "could go to volume 1 (FAT32" in one_error_line(ambiguous.err)
    assert vhdfs("put", child, source, "/x.txt", "--volume", "1").code == 0
    assert vhdfs("put", child, source, "/x.txt", "--volume", "9").code == 2


@pytest.mark.parametrize(("volume", "name", "why"), [
    ("1", "a[1].txt", "mtools reads [ and ] in a name as a pattern"),
    ("1", "a:b.txt", "Windows does not allow : in a name on FAT32"),
    ("1", "CON.txt", "a device name on Windows"),
    ("1", "trailing.", "Windows drops a trailing dot or space"),
])
def test_names_the_file_system_cannot_hold(two_base, tmp_path, vhdfs, volume, name, why):
    child = child_of(two_base, tmp_path)
    before = sha256_file(child)
    source = tmp_path / "x"
    source.write_bytes(b"x")
    done = vhdfs("put", child, source, f"/{name}", "--volume", volume)
    assert done.code == 2
    assert why in one_error_line(done.err)
    assert sha256_file(child) == before


def test_two_source_names_that_are_one_on_ntfs(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.txt").write_bytes(b"1")
    (site / "A.TXT").write_bytes(b"2")
    done = vhdfs("put", child, site, "/inetpub")
    assert done.code == 2
    assert "are one name on NTFS, which ignores case" in one_error_line(done.err)


def test_sources_that_are_not_files_or_folders(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    (tmp_path / "link").symlink_to("/etc/hostname")
    link = vhdfs("put", child, tmp_path / "link", "/srv/x")
    assert link.code == 2 and "a symbolic link" in one_error_line(link.err)
    missing = vhdfs("put", child, tmp_path / "absent", "/srv/x")
    assert missing.code == 2 and "No such file or directory" in one_error_line(missing.err)


def test_exfat_is_not_written_and_says_why(exfat_base, tmp_path, vhdfs):
    child = child_of(exfat_base, tmp_path)
    source = tmp_path / "x"
    source.write_bytes(b"x")
    done = vhdfs("put", child, source, "/x")
    assert done.code == 3
    assert one_error_line(done.err) == (
        "vhdfs: error: volume 1 (exFAT): vhdfs cannot write exFAT: exfat-fuse mounts block "
        "devices only (it asks the kernel for a fuseblk mount, which a regular file cannot "
        "back without a root-made loop device) and exfatprogs has no tool that writes files "
        "(it writes NTFS, FAT and ext2/3/4)")


@pytest.mark.parametrize(("volume", "executable", "package"), [
    ("2", "debugfs", "e2fsprogs"), ("1", "mcopy", "mtools")])
def test_a_missing_tool_names_its_debian_package(two_base, tmp_path, vhdfs, monkeypatch,
                                                 volume, executable, package):
    child = child_of(two_base, tmp_path)
    before = sha256_file(child)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(tools, "SBIN", ())
    done = vhdfs("mkdir", child, "/new", "--volume", volume)
    assert done.code == 1
    assert one_error_line(done.err) == (
        f"vhdfs: error: {executable} is not installed; it writes this file system for vhdfs: "
        f"install the Debian package {package} (apt-get install {package})")
    assert sha256_file(child) == before


def test_ntfs3g_missing_names_its_package(windows_base, tmp_path, vhdfs, monkeypatch):
    child = child_of(windows_base, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    done = vhdfs("rm", child, "/inetpub/wwwroot/Welcome.png")
    assert done.code == 1
    assert "ntfs-3g is not installed" in done.err and "package ntfs-3g" in done.err


def test_a_full_ext4_volume_fails_in_debugfs_words_and_keeps_the_guest_consistent(
        two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "1-small.txt").write_bytes(b"small\n")
    (site / "2-huge.bin").write_bytes(b"\xa5" * (20 * MiB))  # more than the 16 MiB volume
    (site / "3-never.txt").write_bytes(b"never\n")
    done = vhdfs("put", child, site, "/srv", "--progress", "none")
    assert done.code == 1
    assert one_error_line(done.err) == (
        'vhdfs: error: volume 2 (ext4 "linux"): writing /srv/site/2-huge.bin failed: debugfs: '
        "write: Could not allocate block in ext2 filesystem; /srv/site/2-huge.bin was not "
        "written; before it: 1 file written, 1 folder made; the 1 change after it were not "
        f"made; {child} is complete and valid with what was done (vhdfs changes {child} "
        "lists it)")
    assert subprocess.run([sys.executable, "-m", "vhdfs", "check", str(child)],
                          capture_output=True).returncode == 0
    volume = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_names(volume, "/srv/site") == [".", "..", "1-small.txt"]
    ext_fsck(volume)
    check_base(two_base)


def test_a_full_fat_volume_fails_in_mtools_words(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"\x5a" * (48 * MiB))
    done = vhdfs("put", child, huge, "/Docs/huge.bin", "--progress", "none")
    assert done.code == 1
    line = one_error_line(done.err)
    assert line.startswith('vhdfs: error: volume 1 (FAT32 "DATA"): writing /Docs/huge.bin '
                           "failed: mcopy: ")
    assert "/Docs/huge.bin was not written; nothing was changed before it" in line
    fat_fsck(partition_file(child, 1, tmp_path / "p1.fat"))


def test_a_full_ntfs_volume_fails_in_ntfs3g_words(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    huge = tmp_path / "huge.bin"
    huge.write_bytes(b"\x5a" * (60 * MiB))
    done = vhdfs("put", child, huge, "/inetpub/huge.bin", "--progress", "none")
    assert done.code == 1
    assert one_error_line(done.err).startswith(
        'vhdfs: error: volume 2 (NTFS "Windows"): writing /inetpub/huge.bin failed: ntfs-3g: '
        "No space left on device; /inetpub/huge.bin was not written; nothing was changed "
        "before it;")
    assert "huge.bin" not in vhdfs("ls", child, "/inetpub").out
    assert not [n for n in vhdfs("ls", child, "/inetpub").out.split() if "vhdfs" in n]
    check_base(windows_base)


def test_the_disk_under_the_child_filling_up_fails_the_put_and_keeps_the_child_valid(
        windows_base, tmp_path, vhdfs):
    """The child's own file system fills (a 12 MiB tmpfs) while ntfs-3g writes a 32 MiB file:
    the daemon's ENOSPC reaches ntfs-3g through the page cache of the private mount (at its
    write-back, not lost there), the put fails in one line naming the child, the file is not
    left in the guest, and the child is a valid VHD that check calls clean."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(small)], check=True)
    try:
        child = child_of(windows_base, small)
        big = tmp_path / "big.bin"
        big.write_bytes(bytes(range(256)) * (32 * MiB // 256))
        done = vhdfs("put", child, big, "/big.bin", "--volume", "2", "--progress", "none")
        assert done.code == 1, done.err
        line = one_error_line(done.err)
        assert line.startswith('vhdfs: error: volume 2 (NTFS "Windows"): writing /big.bin '
                               "failed: ntfs-3g: No space left on device; /big.bin was not "
                               "written;"), line
        assert line.endswith(f"{child} is complete and valid with what was done (vhdfs changes "
                             f"{child} lists it)")
        assert "big.bin" not in vhdfs("ls", child, "/", "--volume", "2").out
        checked = vhdfs("check", child)
        assert checked.code == 0, checked.out
    finally:
        subprocess.run(["umount", str(small)], check=True)
    check_base(windows_base)


def test_an_ext_journal_that_needs_recovery_is_refused(tmp_path, vhdfs):
    ext = tmp_path / "p1.ext4"
    build_ext4_volume(ext, 16 * MiB, {"etc/hostname": b"x\n"},
                      fs_uuid="0d1f6a2c-3b4e-4f60-8a9b-0c1d2e3f4a5b")
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", str(ext)], check=True,
                   capture_output=True)
    raw = tmp_path / "disk.raw"
    assemble(raw, ALIGN + 16 * MiB + ALIGN, f"label: dos\nstart={ALIGN // SECTOR}, "
             f"size={16 * MiB // SECTOR}, type=83\n", [(ALIGN, ext)])
    base = _base(raw, tmp_path / "base.vhd")
    child = child_of(base, tmp_path)
    done = vhdfs("mkdir", child, "/srv")
    assert done.code == 3
    assert one_error_line(done.err) == (
        "vhdfs: error: volume 1 (ext4): its journal holds changes not yet written (the guest "
        "did not shut down cleanly); writing now would lose them: boot the guest and shut it "
        "down, or run e2fsck on the volume first")


def test_reading_options_and_images_that_cannot_be_written(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    shared = vhdfs("mkdir", child, "/srv/x", "-U")
    assert shared.code == 2 and "--force-share is for reading" in one_error_line(shared.err)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(1024 * 1024))
    refused = vhdfs("mkdir", raw, "/x")
    assert refused.code == 2
    assert "is not a VHD or VHDX (a raw image?)" in one_error_line(refused.err)
    remote = vhdfs("mkdir", "https://acct.blob.core.windows.net/c/child.vhd", "/x")
    assert remote.code == 2 and "writes local images only" in one_error_line(remote.err)


def test_json_errors_are_an_error_object(two_base, tmp_path):
    child = child_of(two_base, tmp_path)
    done = vhdfs_run("rm", child, "/srv", "--json")
    assert done.returncode == 6
    assert b'"type": "RefusedError"' in done.stdout and b'"exit_code": 6' in done.stdout


def _logfile_offset_in(base: Path) -> int:
    """The offset in the VHD file `base` of the first cluster of $LogFile on volume 2: bytes
    ntfs-3g reads when it mounts the volume and planning (through TSK) never reads."""
    with open_chain(str(base), OpenOptions()) as chain:
        volume = open_volumes(chain).get(2)
        logfile = volume.require_fs().open("/$LogFile")
        data = next(attr for attr in logfile if int(attr.info.type) == NTFS_DATA)
        first = next(iter(data))
        offset = volume.start + int(first.addr) * volume.block_size
        extent = next(iter(chain.iter_extents(offset, SECTOR)))
        return int(extent.file_offset)


def test_a_read_error_the_tool_survives_is_a_warning_naming_the_parent(windows_base,
                                                                       tmp_path, vhdfs):
    """ntfs-3g reads $LogFile when it mounts and goes on when that read fails; the put
    succeeds, and the failed read, with the parent file and offset behind it, is a warning
    (the daemon's log is read before the private folder goes)."""
    backing, mnt = tmp_path / "backing", tmp_path / "errorfs"
    backing.mkdir()
    shutil.copyfile(windows_base.path, backing / "base.vhd")
    bad = _logfile_offset_in(backing / "base.vhd")
    failing = errorfs(backing, mnt, [("base.vhd", bad, 4096)])
    try:
        child = child_of(Base(mnt / "base.vhd", ""), tmp_path)
        source = tmp_path / "x"
        source.write_bytes(b"x")
        # a process of its own: the daemon forked from it logs to its file through the real
        # standard error, which pytest's capture replaces in-process
        done = vhdfs_run("put", child, source, "C:\\x.txt", "--volume", "2", "--progress",
                         "none")
        assert done.returncode == 0, done.stderr
        (warning,) = done.stderr.decode().strip().splitlines()
        assert warning.startswith("vhdfs: warning: the image's mount: read of p2 at offset ")
        # the kernel's page cache between ntfs-3g and the daemon reads whole pages
        assert re.search(rf"base\.vhd: reading (512|4096) bytes at offset {bad} failed: "
                         "Input/output error$", warning), warning
        assert vhdfs("cat", child, "C:\\x.txt").raw == b"x"
    finally:
        failing.stop()
