"""convert --skip-free: the clusters no file uses are written as zeros without being read; all
else is copied exactly. A disk with NTFS, FAT32, FAT16, ext4 (1 KiB blocks: several block
groups, some never initialised) and a partition without a file system, each file system
holding files and a large deleted one; exFAT on its own disk. Checked against the file
systems' own tools (e2fsck, fsck.fat, ntfsfix, fsck.exfat) and every file read back through
vhdfs get, and by the deleted files' markers: gone with the flag, there without it."""

from __future__ import annotations

import filecmp
import json
import os
import random
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.common import MiB, new_sparse_file, run_tool
from tests.fixtures.fat import build_fat32_volume
from tests.fixtures.ntfs import build_ntfs_volume, ntfs3g_mount
from tests.fixtures.partitions import assemble
from tests.ops.conftest import cli
from tests.tooling import need

KEEP = {"keep/notes.txt": b"kept file, allocated clusters\n" * 400,
        "keep/deep/data.bin": random.Random(1).randbytes(300 * 1024)}
GAP_MARKER = b"GAP-BETWEEN-PARTITIONS-MARKER-"
UNKNOWN_MARKER = b"UNKNOWN-PARTITION-MARKER-"


def deleted_marker(fs: str) -> bytes:
    return f"DELETED-{fs}-FILE-".encode()


def big_deleted(fs: str) -> bytes:
    return deleted_marker(fs) * (2 * MiB // len(deleted_marker(fs)))


# ------------------------------------------------------------------ volumes with a deleted file
def ntfs_volume(path: Path, size: int, start_sector: int) -> None:
    build_ntfs_volume(path, size, {**KEEP, "big.bin": big_deleted("NTFS")}, "DATA",
                      partition_start_sector=start_sector, volume_serial=0x1234)
    with ntfs3g_mount(path, path.with_suffix(".mnt")) as mounted:
        os.unlink(mounted / "big.bin")


def fat_volume(path: Path, size: int, bits: int, start_sector: int) -> None:
    name = f"FAT{bits}"
    if bits == 32:
        build_fat32_volume(path, size, {**KEEP, "big.bin": big_deleted(name)}, label="FATVOL",
                           volume_id=0x1234ABCD, hidden_sectors=start_sector)
    else:
        new_sparse_file(path, size)
        run_tool(["mkfs.vfat", "-F", "16", "-S", "512", "-s", "4", "-h", str(start_sector),
                  "-i", "0BADF00D", str(path)])
        env = {"MTOOLS_SKIP_CHECK": "1"}
        staging = path.with_suffix(".files")
        staging.mkdir()
        run_tool(["mmd", "-i", str(path), "::/keep", "::/keep/deep"], env=env)
        for rel, data in {**KEEP, "big.bin": big_deleted(name)}.items():
            (staging / rel.replace("/", "_")).write_bytes(data)
            run_tool(["mcopy", "-i", str(path), str(staging / rel.replace("/", "_")), "::/" + rel],
                     env=env)
    run_tool(["mdel", "-i", str(path), "::/big.bin"], env={"MTOOLS_SKIP_CHECK": "1"})


def ext4_volume(path: Path, size: int) -> None:
    """1 KiB blocks: 8 MiB groups, backup superblocks in groups 1 and 3, which mkfs leaves
    BLOCK_UNINIT (their bitmaps never written)."""
    staging = path.with_suffix(".files")
    for rel, data in {**KEEP, "big.bin": big_deleted("ext4")}.items():
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
    new_sparse_file(path, size)
    run_tool(["mkfs.ext4", "-q", "-F", "-b", "1024", "-E", "root_owner=0:0", "-d", str(staging),
              str(path)])
    run_tool(["debugfs", "-w", "-R", "rm /big.bin", str(path)])


def unknown_partition(path: Path, size: int) -> None:
    path.write_bytes((UNKNOWN_MARKER * (size // len(UNKNOWN_MARKER) + 1))[:size])


@dataclass
class Disk:
    image: Path  # a dynamic VHD
    volumes: dict[str, tuple[int, int]]  # file system -> (start, length)


LAYOUT = [("NTFS", 1, 24), ("FAT32", 26, 40), ("FAT16", 66, 16), ("ext4", 82, 24),
          ("none", 106, 4)]  # (what, start MiB, size MiB); a 1 MiB gap at 25 MiB
DISK_MIB = 112
GPT_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
GPT_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Disk:
    for tool in ("mkntfs", "ntfs-3g", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "sfdisk"):
        need(tool)
    folder = tmp_path_factory.mktemp("skipfree")
    parts = []
    table = "label: gpt\n"
    for what, start, size in LAYOUT:
        vol = folder / f"{what}.vol"
        if what == "NTFS":
            ntfs_volume(vol, size * MiB, start * MiB // 512)
        elif what.startswith("FAT"):
            fat_volume(vol, size * MiB, int(what[3:]), start * MiB // 512)
        elif what == "ext4":
            ext4_volume(vol, size * MiB)
        else:
            unknown_partition(vol, size * MiB)
        parts.append((start * MiB, vol))
        kind = GPT_BASIC_DATA if what in ("NTFS", "FAT32", "FAT16") else GPT_LINUX_DATA
        table += f"start={start * MiB // 512}, size={size * MiB // 512}, type={kind}\n"
    raw = folder / "disk.raw"
    assemble(raw, DISK_MIB * MiB, table, parts)
    with open(raw, "r+b") as handle:  # something in the gap between partitions 1 and 2
        handle.seek(25 * MiB + 4096)
        handle.write(GAP_MARKER * 100)
    image = folder / "disk.vhd"
    assert cli("convert", raw, image, "--to", "dynamic").returncode == 0
    return Disk(image, {what: (start * MiB, size * MiB) for what, start, size in LAYOUT})


def flat_of(image: Path, out: Path, *flags: str) -> tuple[bytes, dict]:
    done = cli("convert", image, out, "--to", "raw", "--json", *flags)
    assert done.returncode == 0, done.stderr
    return out.read_bytes(), json.loads(done.stdout)


def slice_to(data: bytes, start: int, length: int, path: Path) -> Path:
    path.write_bytes(data[start:start + length])
    return path


# ------------------------------------------------------------------ the tests
def test_deleted_data_is_left_out_and_everything_else_copied_exactly(disk: Disk, tmp_path: Path) -> None:
    before, plain = flat_of(disk.image, tmp_path / "plain.raw")
    after, result = flat_of(disk.image, tmp_path / "skipped.raw", "--skip-free")
    for fs in ("NTFS", "FAT32", "FAT16", "ext4"):  # the data is there to be left out...
        assert deleted_marker(fs) in before, fs
        assert deleted_marker(fs) not in after, f"{fs}: the deleted file went along"
    assert GAP_MARKER in after and UNKNOWN_MARKER * 8 in after
    assert plain["skipped_free"] == 0 and plain["free_space"] is None
    free = result["free_space"]
    assert free["partition_table"] == "gpt"
    by_volume = {v["volume"]: v for v in free["volumes"]}
    assert [by_volume[n]["file_system"] for n in range(1, 6)] == \
        ["NTFS", "FAT32", "FAT16", "ext4", None]
    assert all(by_volume[n]["kept"] is None and by_volume[n]["free"] > MiB for n in range(1, 5))
    assert by_volume[5]["kept"] == "no file system TSK recognises" and by_volume[5]["free"] == 0
    assert result["skipped_free"] >= 4 * 2 * MiB  # at least the four deleted files
    assert result["data_read"] <= plain["data_read"] - 4 * 2 * MiB
    # Byte for byte: every difference is a zero in the output, inside a file system's
    # partition; the partition table, the gap, the backup GPT and partition 5 are equal.
    assert len(after) == len(before)
    volumes = [(start, start + length) for what, (start, length) in disk.volumes.items()
               if what != "none"]
    step = 64 * 1024
    for at in range(0, len(before), step):
        if before[at:at + step] == after[at:at + step]:
            continue
        assert after[at:at + step] == bytes(step) or all(
            after[s:s + 512] in (before[s:s + 512], bytes(512)) for s in range(at, at + step, 512))
        assert any(lo <= at and at + step <= hi for lo, hi in volumes), f"offset {at}"


def test_every_file_reads_the_same_and_the_file_systems_check_clean(disk: Disk, tmp_path: Path) -> None:
    after, _ = flat_of(disk.image, tmp_path / "skipped.raw", "--skip-free")
    out = tmp_path / "skipped.raw"
    for number in (1, 2, 3, 4):
        ours, theirs = tmp_path / f"in{number}", tmp_path / f"out{number}"
        assert cli("get", disk.image, "/", ours, "--volume", number).returncode == 0
        assert cli("get", out, "/", theirs, "--volume", number).returncode == 0
        compared = filecmp.dircmp(ours, theirs)
        assert _same_tree(compared), f"volume {number}: {compared.report()}"
        assert (theirs / "keep" / "deep" / "data.bin").read_bytes() == KEEP["keep/deep/data.bin"]
    volume = {what: slice_to(after, start, length, tmp_path / f"{what}.vol")
              for what, (start, length) in disk.volumes.items()}
    need("e2fsck")
    check = subprocess.run(["e2fsck", "-fn", str(volume["ext4"])], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # From the backup superblock in a BLOCK_UNINIT group, e2fsck sees what it sees in the
    # source (a backup is stale by nature: the same complaints, not a missing superblock).
    before, _ = flat_of(disk.image, tmp_path / "plain.raw")
    start, length = disk.volumes["ext4"]
    source = slice_to(before, start, length, tmp_path / "source-ext4.vol")
    seen = [subprocess.run(["e2fsck", "-fn", "-b", "8193", "-B", "1024", str(path)],
                           capture_output=True, text=True) for path in (source, volume["ext4"])]
    assert seen[0].stdout.replace(str(source), "VOL") == seen[1].stdout.replace(str(volume["ext4"]), "VOL")
    assert "Bad magic number" not in seen[1].stdout + seen[1].stderr
    for what in ("FAT32", "FAT16"):
        check = subprocess.run(["fsck.vfat", "-n", str(volume[what])], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    need("ntfsfix")
    check = subprocess.run(["ntfsfix", "--no-action", str(volume["NTFS"])], capture_output=True,
                           text=True)
    assert check.returncode == 0 and "corrupt" not in check.stdout.lower(), check.stdout


def _same_tree(compared: filecmp.dircmp) -> bool:
    if compared.left_only or compared.right_only or compared.diff_files or compared.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(compared.left, compared.right, compared.common_files,
                                           shallow=False)
    return not mismatch and not errors and all(_same_tree(sub) for sub in compared.subdirs.values())


def test_ext_groups_whose_bitmap_was_never_written_are_kept(disk: Disk, tmp_path: Path) -> None:
    """TSK reads a BLOCK_UNINIT group's bitmap as all free, its backup superblock included:
    those groups are kept whole (the backup checked above by e2fsck -b 8193)."""
    before, _ = flat_of(disk.image, tmp_path / "plain.raw")
    after, _ = flat_of(disk.image, tmp_path / "skipped.raw", "--skip-free")
    start, _ = disk.volumes["ext4"]
    backup = start + 8193 * 1024
    assert before[backup + 56:backup + 58] == b"\x53\xef"  # a superblock is there
    group_1 = slice(start + 8193 * 1024, start + 16385 * 1024)
    assert after[group_1] == before[group_1]


# ------------------------------------------------------------------ kept whole
def _patch(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(value)


def _ntfs_set_dirty(path: Path) -> None:
    """Set the dirty flag of $Volume's $VOLUME_INFORMATION in an NTFS volume file (record 3
    of the MFT; the flags are bytes 10-11 of the attribute's value)."""
    boot = path.read_bytes()[:512]
    cluster = struct.unpack_from("<H", boot, 11)[0] * boot[13]
    mft = struct.unpack_from("<q", boot, 0x30)[0] * cluster
    size_field = struct.unpack_from("<b", boot, 0x40)[0]
    record_size = 1 << -size_field if size_field < 0 else size_field * cluster
    at = mft + 3 * record_size
    record = bytearray(path.read_bytes()[at:at + record_size])
    pos = struct.unpack_from("<H", record, 0x14)[0]
    while True:
        kind, length = struct.unpack_from("<II", record, pos)
        assert kind != 0xFFFFFFFF, "no $VOLUME_INFORMATION"
        if kind == 0x70:
            value_at = pos + struct.unpack_from("<H", record, pos + 0x14)[0]
            flags = struct.unpack_from("<H", record, value_at + 10)[0]
            _patch(path, at + value_at + 10, struct.pack("<H", flags | 1))
            return
        pos += length


@pytest.mark.parametrize("case", ["ntfs-dirty", "ntfs-hibernated", "fat32-dirty", "fat16-fat-entry",
                                  "ext4-journal-to-recover"])
def test_a_file_system_not_left_clean_is_kept_whole(case: str, tmp_path: Path) -> None:
    what = case.split("-")[0]
    vol = tmp_path / "vol"
    if what == "ntfs":
        ntfs_volume(vol, 24 * MiB, 2048)
        if case == "ntfs-dirty":
            _ntfs_set_dirty(vol)
        else:
            with ntfs3g_mount(vol, tmp_path / "mnt") as mounted:
                (mounted / "hiberfil.sys").write_bytes(b"HIBR" + bytes(8188))
        reason, fs = ("marked dirty", "NTFS") if case == "ntfs-dirty" else ("hibernated", "NTFS")
    elif what == "fat32":
        fat_volume(vol, 40 * MiB, 32, 2048)
        _patch(vol, 0x41, b"\x01")
        reason, fs = "FAT32 marked dirty (boot sector", "FAT32"
    elif what == "fat16":
        fat_volume(vol, 16 * MiB, 16, 2048)
        reserved = struct.unpack_from("<H", vol.read_bytes(), 0x0E)[0]
        _patch(vol, reserved * 512 + 2, b"\xff\x7f")  # clean-shutdown bit clear
        reason, fs = "FAT16 marked dirty (FAT entry 1", "FAT16"
    else:
        ext4_volume(vol, 24 * MiB)
        run_tool(["debugfs", "-w", "-R", "feature needs_recovery", str(vol)])
        reason, fs = "journal needs recovery", "ext4"
    raw = tmp_path / "disk.raw"
    assemble(raw, vol.stat().st_size + 2 * MiB, "label: dos\nstart=2048\n", [(MiB, vol)])
    after, result = flat_of(raw, tmp_path / "out.raw", "--skip-free")
    volume = result["free_space"]["volumes"][0]
    assert volume["file_system"] == fs and reason in volume["kept"], volume
    assert result["skipped_free"] == 0
    assert deleted_marker("NTFS" if fs == "NTFS" else fs) in after
    assert after == raw.read_bytes()


def test_a_disk_without_a_partition_table_and_an_unknown_one(tmp_path: Path) -> None:
    """A file system on the whole disk is walked like a partition; a disk of nothing known
    is copied whole (the command says so)."""
    vol = tmp_path / "whole.raw"
    fat_volume(vol, 40 * MiB, 32, 0)
    after, result = flat_of(vol, tmp_path / "out.raw", "--skip-free")
    assert result["free_space"]["partition_table"] == "none"
    assert result["free_space"]["volumes"][0]["file_system"] == "FAT32"
    assert deleted_marker("FAT32") not in after and deleted_marker("FAT32") in vol.read_bytes()
    noise = tmp_path / "noise.raw"
    noise.write_bytes(random.Random(3).randbytes(4 * MiB))
    done = cli("convert", noise, tmp_path / "noise.vhd", "--to", "fixed", "--skip-free")
    assert done.returncode == 0, done.stderr
    assert "left out 0 B (0 bytes)" in done.stdout and "no file system TSK recognises" in done.stdout
    assert (tmp_path / "noise.vhd").read_bytes()[:4 * MiB] == noise.read_bytes()


def test_exfat(tmp_path: Path) -> None:
    """TSK reads exFAT's allocation bitmap: its free clusters are left out too."""
    for tool in ("mkfs.exfat", "mount.exfat-fuse", "fusermount", "losetup", "fsck.exfat"):
        need(tool)
    vol = tmp_path / "exfat.raw"
    new_sparse_file(vol, 64 * MiB)
    subprocess.run(["mkfs.exfat", str(vol)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    loop = subprocess.run(["losetup", "--find", "--show", str(vol)], capture_output=True, text=True)
    if loop.returncode:
        pytest.skip(f"no loop device for exfat-fuse: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", device, str(mnt)], check=True, capture_output=True)
        try:
            for rel, data in {**KEEP, "big.bin": big_deleted("exFAT")}.items():
                (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
                (mnt / rel).write_bytes(data)
            os.sync()
            (mnt / "big.bin").unlink()
        finally:
            subprocess.run(["fusermount", "-u", str(mnt)], check=True, capture_output=True)
    finally:
        deadline = time.monotonic() + 10
        while subprocess.run(["losetup", "-d", device], capture_output=True).returncode:
            assert time.monotonic() < deadline, f"{device} stayed busy"
            time.sleep(0.1)
    assert deleted_marker("exFAT") in vol.read_bytes()
    after, result = flat_of(vol, tmp_path / "out.raw", "--skip-free")
    assert result["free_space"]["volumes"][0]["file_system"] == "exFAT"
    assert deleted_marker("exFAT") not in after
    check = subprocess.run(["fsck.exfat", "-n", str(tmp_path / "out.raw")], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert cli("get", tmp_path / "out.raw", "/keep", tmp_path / "got").returncode == 0
    assert (tmp_path / "got" / "deep" / "data.bin").read_bytes() == KEEP["keep/deep/data.bin"]
    shutil.rmtree(tmp_path / "got")


def test_a_hibernated_windows_keeps_every_ntfs_volume_of_the_disk(tmp_path: Path) -> None:
    """Fast Startup and hibernation hold every volume Windows had mounted, not only the one
    with hiberfil.sys; a FAT volume beside them is still walked."""
    system, data, fat = tmp_path / "system.vol", tmp_path / "data.vol", tmp_path / "fat.vol"
    ntfs_volume(system, 24 * MiB, 2048)
    with ntfs3g_mount(system, tmp_path / "mnt") as mounted:
        (mounted / "hiberfil.sys").write_bytes(b"hibr" + bytes(8188))
    ntfs_volume(data, 24 * MiB, 2048 + 24 * MiB // 512)
    fat_volume(fat, 40 * MiB, 32, 2048 + 48 * MiB // 512)
    raw = tmp_path / "disk.raw"
    assemble(raw, 92 * MiB, "label: dos\nstart=2048, size=49152, type=7\n"
             "start=51200, size=49152, type=7\nstart=100352, size=81920, type=c\n",
             [(MiB, system), (25 * MiB, data), (49 * MiB, fat)])
    after, result = flat_of(raw, tmp_path / "out.raw", "--skip-free")
    kept = [v["kept"] or "" for v in result["free_space"]["volumes"]]
    assert "hibernated on it" in kept[0] and "hibernated on volume 1" in kept[1] and not kept[2]
    assert deleted_marker("NTFS") in after and deleted_marker("FAT32") not in after
