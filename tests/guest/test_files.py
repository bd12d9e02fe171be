"""vhdfs volumes, ls, cat, get: guest files read through the chain by TSK."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.guest.conftest import WELCOME, convert, sha256

DEPTHS = {1: "base.vhd", 2: "child.vhd", 3: "grandchild.vhd"}


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cat_welcome_png_through_each_chain_depth(vhdfs, windows_chain, depth):
    image = windows_chain.folder / DEPTHS[depth]
    result = vhdfs("cat", image, "/" + WELCOME)
    assert result.code == 0, result.err
    assert sha256(result.raw) == sha256(windows_chain.pngs[depth - 1])


@pytest.mark.parametrize("path", [
    "C:\\inetpub\\wwwroot\\Welcome.png",
    "c:/INETPUB/wwwroot/welcome.PNG",
    "\\Inetpub\\WWWROOT\\WELCOME.png",
    "inetpub/./wwwroot/../wwwroot/Welcome.png",
])
def test_paths_with_drive_letters_either_slash_and_any_case(vhdfs, windows_chain, path):
    result = vhdfs("cat", windows_chain.folder / "child.vhd", path)
    assert result.code == 0, result.err
    assert result.raw == windows_chain.pngs[1]


def test_volumes_shows_the_mbr_table(vhdfs, windows_raw):
    raw, layout = windows_raw
    result = vhdfs("volumes", raw, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["scheme"] == "mbr"
    assert data["disk_signature"] == layout["disk"]["signature"].upper().replace("0X", "0x")
    got = [(v["number"], v["start"], v["size"], v["file_system"], v["label"], v["boot"])
           for v in data["volumes"]]
    want = [(p["number"], p["start"], p["size"], "NTFS", p["label"], p["active"])
            for p in layout["partitions"]]
    assert got == want
    text = vhdfs("volumes", raw).out
    assert "System Reserved" in text and "active" in text


def test_volumes_shows_the_gpt_table(vhdfs, linux_raw):
    raw, layout = linux_raw
    data = json.loads(vhdfs("volumes", raw, "--json").out)
    assert data["scheme"] == "gpt"
    assert [(v["number"], v["file_system"], v["guid"], v["uuid"]) for v in data["volumes"]] == [
        (1, "FAT32", layout["partitions"][0]["partuuid"], layout["partitions"][0]["uuid"]),
        (2, "ext4", layout["partitions"][1]["partuuid"], layout["partitions"][1]["uuid"])]
    assert data["volumes"][0]["type"] == "EFI System"


def test_ls_lists_a_directory_and_long_format(vhdfs, windows_chain):
    image = windows_chain.folder / "child.vhd"
    result = vhdfs("ls", image, "C:\\inetpub\\wwwroot")
    assert result.code == 0, result.err
    assert result.out.split() == ["iisstart.htm", "Welcome.png"]
    long = vhdfs("ls", image, "/inetpub/wwwroot", "-l").out.splitlines()
    welcome = next(line for line in long if line.endswith("Welcome.png"))
    assert welcome.split()[0] == "file"
    assert int(welcome.split()[1]) == len(windows_chain.pngs[1])
    root = vhdfs("ls", image, "/", "--volume", "2", "--json")
    names = [e["name"] for e in json.loads(root.out)["entries"]]
    assert {"inetpub", "Windows", "WindowsAzure"} <= set(names)
    assert "$OrphanFiles" not in names


def test_without_volume_a_path_on_several_volumes_is_refused(vhdfs, windows_raw):
    raw, _ = windows_raw
    result = vhdfs("ls", raw, "/$MFT")
    assert result.code == 2
    assert "exists on volume 1" in result.err and "volume 2" in result.err
    assert "--volume N" in result.err
    assert vhdfs("ls", raw, "/$MFT", "--volume", "1").code == 0


def test_missing_path_and_missing_volume(vhdfs, windows_raw):
    raw, _ = windows_raw
    missing = vhdfs("cat", raw, "C:\\nowhere\\file.txt")
    assert missing.code == 1
    assert missing.err.startswith("vhdfs: error: C:\\nowhere\\file.txt: not found on any volume")
    novol = vhdfs("ls", raw, "/", "--volume", "7")
    assert novol.code == 2 and "there is no volume 7" in novol.err
    isdir = vhdfs("cat", raw, "/inetpub")
    assert isdir.code == 1 and "is a directory" in isdir.err


def test_get_copies_a_file_and_a_directory(vhdfs, windows_chain, tmp_path):
    image = windows_chain.folder / "grandchild.vhd"
    result = vhdfs("get", image, "C:\\inetpub\\wwwroot\\Welcome.png", tmp_path)
    assert result.code == 0, result.err
    assert (tmp_path / "Welcome.png").read_bytes() == windows_chain.pngs[2]
    again = vhdfs("get", image, "/" + WELCOME, tmp_path / "Welcome.png")
    assert again.code == 6 and "--force" in again.err
    assert vhdfs("get", image, "/" + WELCOME, tmp_path / "Welcome.png", "--force").code == 0
    tree = vhdfs("get", image, "/inetpub", tmp_path / "site")
    assert tree.code == 0, tree.err
    assert (tmp_path / "site" / "wwwroot" / "Welcome.png").read_bytes() == windows_chain.pngs[2]
    assert (tmp_path / "site" / "wwwroot" / "iisstart.htm").read_bytes().startswith(b"<!DOCTYPE")


def test_fat_and_ext4_volumes_of_the_linux_disk(vhdfs, linux_raw):
    raw, layout = linux_raw
    grub = vhdfs("cat", raw, "/efi/DEBIAN/GRUB.cfg")  # FAT: any case
    assert grub.code == 0, grub.err
    assert sha256(grub.raw) == layout["files"]["1:/EFI/debian/grub.cfg"]
    fstab = vhdfs("cat", raw, "/etc/fstab")
    assert sha256(fstab.raw) == layout["files"]["2:/etc/fstab"]
    assert vhdfs("cat", raw, "/ETC/fstab").code == 1  # ext4 names are case-sensitive
    kernel = vhdfs("cat", raw, "/vmlinuz")  # a symbolic link into /boot
    assert sha256(kernel.raw) == layout["files"]["2:/boot/vmlinuz-6.1.0-18-amd64"]
    listing = vhdfs("ls", raw, "/", "--volume", "2").out.splitlines()
    assert "vmlinuz -> boot/vmlinuz-6.1.0-18-amd64" in listing
    efi = vhdfs("ls", raw, "/", "--volume", "1").out.split()
    assert efi == ["EFI/"]  # TSK's virtual $MBR/$FAT1/$FAT2 are not guest files


def test_whole_disk_file_system_is_volume_1(vhdfs, linux_raw, tmp_path):
    """A disk without a partition table, formatted as a whole (here: the ESP alone)."""
    raw, layout = linux_raw
    part = layout["partitions"][0]
    whole = tmp_path / "esp.raw"
    with open(raw, "rb") as src, open(whole, "wb") as dst:
        src.seek(part["start"])
        dst.write(src.read(part["size"]))
    data = json.loads(vhdfs("volumes", whole, "--json").out)
    assert data["scheme"] == "none"
    assert [(v["number"], v["file_system"], v["type"]) for v in data["volumes"]] == [
        (1, "FAT32", "whole disk")]
    assert vhdfs("cat", whole, "EFI\\debian\\grub.cfg").code == 0


def _corrupt(raw, tmp_path, offset: int, data: bytes):
    copy = tmp_path / "broken.raw"
    shutil.copyfile(raw, copy)
    with open(copy, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return copy


def test_unknown_file_system_is_a_clear_error(vhdfs, windows_raw, tmp_path):
    raw, layout = windows_raw
    start = layout["partitions"][1]["start"]
    broken = _corrupt(raw, tmp_path, start, bytes(range(256)) * 2)  # boot sector overwritten
    listing = vhdfs("ls", broken, "/", "--volume", "2")
    assert listing.code == 3
    assert listing.err.startswith("vhdfs: error: volume 2 (no file system): no file system TSK "
                                  "recognises")
    assert "Traceback" not in listing.err and "internal error" not in listing.err
    table = vhdfs("volumes", broken)
    assert table.code == 0
    assert "volume 2: no file system TSK recognises" in table.out


def test_damaged_mft_is_a_clear_error(vhdfs, windows_raw, tmp_path):
    raw, layout = windows_raw
    start = layout["partitions"][1]["start"]
    with open(raw, "rb") as f:
        f.seek(start + 0x30)
        mft_cluster = int.from_bytes(f.read(8), "little")
    broken = _corrupt(raw, tmp_path, start + mft_cluster * 4096, b"\xa5" * 8192)
    for argv in (("ls", broken, "/inetpub", "--volume", "2"),
                 ("cat", broken, "/" + WELCOME, "--volume", "2"),
                 ("verify", broken)):
        result = vhdfs(*argv)
        assert result.code in (1, 3), (argv, result.code, result.err)
        assert "Traceback" not in result.err and "internal error" not in result.err
        assert result.err.startswith("vhdfs: error: ") or "FAIL" in result.out


def test_damaged_mft_record_is_named_not_hidden(vhdfs, windows_raw, tmp_path):
    """A file whose MFT record is garbage: ls marks it, cat fails with TSK's reason, get says 1."""
    import pytsk3

    raw, layout = windows_raw
    start = layout["partitions"][1]["start"]
    fs = pytsk3.FS_Info(pytsk3.Img_Info(str(raw)), offset=start)
    record = fs.open("/" + WELCOME).info.meta.addr
    with open(raw, "rb") as f:
        f.seek(start + 0x30)
        mft = int.from_bytes(f.read(8), "little") * 4096
    broken = _corrupt(raw, tmp_path, start + mft + record * 1024 + 64, b"\xa5" * 900)
    listing = vhdfs("ls", broken, "/inetpub/wwwroot")
    assert listing.code == 0
    assert "Welcome.png  (damaged: its metadata cannot be read)" in listing.out
    cat = vhdfs("cat", broken, "/" + WELCOME)
    assert cat.code == 3
    assert "Incorrect update sequence value in MFT entry" in cat.err
    get = vhdfs("get", broken, "/inetpub", tmp_path / "out")
    assert get.code == 1
    assert "Welcome.png: its metadata is unreadable" in get.err
    assert (tmp_path / "out" / "wwwroot" / "iisstart.htm").exists()


def _exfat_volume(path, files: dict[str, bytes]) -> None:
    """An exFAT file system over the whole of `path`, holding `files` (mkfs.exfat, then the
    files copied in through exfat-fuse on a loop device: exfatprogs has no tool that writes
    files, and exfat-fuse wants a block device)."""
    for tool in ("mkfs.exfat", "mount.exfat-fuse", "fusermount", "losetup"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs exfatprogs and "
                        "exfat-fuse)")
    with open(path, "wb") as out:
        out.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.exfat", "-L", "EXDATA", str(path)], check=True, capture_output=True)
    mnt = path.with_suffix(".mnt")
    mnt.mkdir()
    loop = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", loop, str(mnt)], check=True, capture_output=True)
        try:
            for name, data in files.items():
                target = mnt / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        finally:
            subprocess.run(["fusermount", "-u", str(mnt)], check=True, capture_output=True)
    finally:
        # exfat-fuse may still be writing its last metadata after the unmount returns: the
        # loop device stays busy until it has, and only then is the image complete.
        deadline = time.monotonic() + 10
        while subprocess.run(["losetup", "-d", loop], capture_output=True).returncode:
            assert time.monotonic() < deadline, f"{loop} stayed busy"
            time.sleep(0.1)
        subprocess.run(["sync"], check=True)


def test_exfat_volume_through_a_chain(vhdfs, tmp_path):
    payload = bytes(range(256)) * 300
    raw = tmp_path / "exfat.raw"
    _exfat_volume(raw, {"Data/Report 2024.bin": payload, "readme.txt": b"exFAT volume\n"})
    convert(raw, tmp_path / "base.vhd")
    assert vhdfs("create", tmp_path / "child.vhd", "--parent", tmp_path / "base.vhd").code == 0
    volumes = json.loads(vhdfs("volumes", tmp_path / "child.vhd", "--json").out)
    assert [(v["number"], v["file_system"]) for v in volumes["volumes"]] == [(1, "exFAT")]
    result = vhdfs("cat", tmp_path / "child.vhd", "D:\\DATA\\report 2024.BIN")  # any case
    assert result.code == 0, result.err
    assert result.raw == payload
    listing = vhdfs("ls", tmp_path / "child.vhd", "/").out.split()
    assert "Data/" in listing and "readme.txt" in listing
