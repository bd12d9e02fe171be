"""The guest disks of tests/fixtures (windows.py, linux.py), checked with independent tools.

The partition table is read back with ``sfdisk --json``; partitions are cut
out of the image at the offsets *sfdisk* reports and inspected with
ntfs-3g's ``ntfscat``/``ntfsls``/``ntfsinfo``, e2fsprogs' ``e2fsck``/
``debugfs``/``dumpe2fs`` and mtools' ``mdir``/``mtype``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pefile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures import common, content, linux, partitions, windows

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
DISK_SIZE = 128 * MiB


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def need(*tools: str) -> None:
    missing = [t for t in tools if _tool(t) is None]
    if missing:
        pytest.skip(f"required tool(s) not installed: {', '.join(missing)}")


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = _tool(cmd[0]) or cmd[0]
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def sfdisk_json(image: Path) -> dict:
    return json.loads(run("sfdisk", "--json", str(image)).stdout)["partitiontable"]


def extract(image: Path, part: dict, dest: Path) -> Path:
    """Copy one partition (as sfdisk reports it) out of the image."""
    start, size = part["start"] * 512, part["size"] * 512
    with open(image, "rb") as src, open(dest, "wb") as dst:
        src.seek(start)
        remaining = size
        while remaining:
            buf = src.read(min(4 * MiB, remaining))
            assert buf, "image shorter than its partition table says"
            dst.write(buf)
            remaining -= len(buf)
    return dest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ntfscat(part_file: Path, path: str) -> bytes:
    exe = _tool("ntfscat")
    proc = subprocess.run([exe, "-f", str(part_file), path], capture_output=True, check=False)
    assert proc.returncode == 0, f"ntfscat {path}: {proc.stderr.decode()}"
    return proc.stdout


def ntfs_tree(part_file: Path) -> set[str]:
    """All paths in an NTFS volume, via ntfsls -R."""
    out = run("ntfsls", "-f", "-R", str(part_file)).stdout
    paths, cur = set(), None
    for line in out.splitlines():
        if line.endswith(":") and line.startswith("/"):
            cur = line[:-1].rstrip("/")
        elif line.strip() and line not in (".", "..") and cur is not None:
            paths.add(f"{cur}/{line}")
    return paths


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """Minimal independent PNG reader: returns (width, height, raw scanlines)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, ctype, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    assert all(raw[y * stride] == 0 for y in range(height)), "unexpected filter type"
    return width, height, raw


def test_make_png_is_valid_and_seed_dependent():
    a = content.make_png(64, 40, seed=1)
    b = content.make_png(64, 40, seed=2)
    assert content.make_png(64, 40, seed=1) == a  # deterministic
    wa, ha, raw_a = parse_png(a)
    wb, hb, raw_b = parse_png(b)
    assert (wa, ha) == (wb, hb) == (64, 40)
    pixels_a = [raw_a[i] for i in range(len(raw_a)) if i % (1 + 3 * 64)]
    pixels_b = [raw_b[i] for i in range(len(raw_b)) if i % (1 + 3 * 64)]
    differing = sum(x != y for x, y in zip(pixels_a, pixels_b, strict=True))
    assert differing > len(pixels_a) // 2, "different seeds should give different pictures"
    assert len(set(zip(*[iter(pixels_a)] * 3, strict=True))) > 10, "picture is not flat"


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**32))
def test_make_png_any_size(width, height, seed):
    assert parse_png(content.make_png(width, height, seed))[:2] == (width, height)


def test_parse_size():
    assert common.parse_size("256M") == 256 * MiB
    assert common.parse_size("1G") == 1024 * MiB
    assert common.parse_size("64MiB") == 64 * MiB
    assert common.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        common.parse_size("lots")


# --------------------------------------------------------------------------
# PE files
# --------------------------------------------------------------------------


def test_distlib_launcher_has_genuine_version_resource():
    launcher = content.find_distlib_launcher()
    assert launcher.name == "t64.exe" and launcher.is_file()
    pe = pefile.PE(str(launcher))
    assert pe.FILE_HEADER.Machine == pefile.MACHINE_TYPE["IMAGE_FILE_MACHINE_AMD64"]
    assert hasattr(pe, "VS_FIXEDFILEINFO"), "no VERSIONINFO resource"
    fixed = pe.VS_FIXEDFILEINFO[0]
    assert fixed.Signature == 0xFEEF04BD
    version = (
        f"{fixed.FileVersionMS >> 16}.{fixed.FileVersionMS & 0xFFFF}."
        f"{fixed.FileVersionLS >> 16}.{fixed.FileVersionLS & 0xFFFF}"
    )
    strings = {}
    for info in getattr(pe, "FileInfo", []):
        for entry in info:
            for table in getattr(entry, "StringTable", []):
                strings.update({k.decode(): v.decode() for k, v in table.entries.items()})
    print(f"\n{launcher}: FileVersion {version}; strings {strings}")
    assert version != "0.0.0.0"


def test_efi_stub_is_pe32plus_efi_application():
    pe = pefile.PE(data=content.make_efi_stub())
    assert pe.FILE_HEADER.Machine == 0x8664
    assert pe.OPTIONAL_HEADER.Magic == 0x20B
    assert pe.OPTIONAL_HEADER.Subsystem == 10  # EFI_APPLICATION
    entry = pe.get_data(pe.OPTIONAL_HEADER.AddressOfEntryPoint, 3)
    assert entry == b"\x31\xc0\xc3"


# --------------------------------------------------------------------------
# Windows disk
# --------------------------------------------------------------------------

WIN_TOOLS = ("mkntfs", "ntfs-3g", "sfdisk", "ntfscat", "ntfsls", "ntfsinfo")
AGENT_EXE = f"{windows.WINDOWS_AGENT_DIR}/WindowsAzureGuestAgent.exe"


@pytest.fixture(scope="module")
def windows_disk(tmp_path_factory):
    need(*WIN_TOOLS)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("ntfs-3g needs /dev/fuse to populate NTFS volumes")
    d = tmp_path_factory.mktemp("win")
    png = content.make_png(96, 64, seed=4242)
    bcd = b"regf-not-really" + bytes(range(256)) * 8
    layout = windows.build_windows_disk(d / "win.raw", DISK_SIZE, welcome_png=png, bcd=bcd)
    return d, d / "win.raw", layout, png, bcd


def test_windows_partition_table(windows_disk):
    d, image, layout, _, _ = windows_disk
    assert image.stat().st_size == DISK_SIZE
    table = sfdisk_json(image)
    assert table["label"] == "dos"
    assert int(table["id"], 16) == windows.DEFAULT_DISK_SIGNATURE
    parts = table["partitions"]
    assert len(parts) == 2
    assert [p["type"] for p in parts] == ["7", "7"]
    assert parts[0].get("bootable") is True and not parts[1].get("bootable", False)
    assert parts[0]["start"] == 2048 and parts[0]["size"] * 512 == 32 * MiB
    assert parts[1]["start"] == parts[0]["start"] + parts[0]["size"]
    assert (parts[1]["start"] + parts[1]["size"]) * 512 <= DISK_SIZE
    for p, lp in zip(parts, layout["partitions"], strict=True):
        assert (p["start"] * 512, p["size"] * 512) == (lp["start"], lp["size"])
    assert [lp["active"] for lp in layout["partitions"]] == [True, False]
    # the MBR itself: signature at 440, boot flag of entry 1, 0x55AA
    with open(image, "rb") as f:
        mbr = f.read(512)
    assert struct.unpack_from("<I", mbr, 440)[0] == windows.DEFAULT_DISK_SIGNATURE
    assert mbr[446] == 0x80 and mbr[446 + 16] == 0x00
    assert mbr[510:] == b"\x55\xaa"
    # sparse: far less allocated than the nominal size
    assert image.stat().st_blocks * 512 < DISK_SIZE // 4


def test_windows_volumes_content(windows_disk):
    d, image, layout, png, bcd = windows_disk
    parts = sfdisk_json(image)["partitions"]
    p1 = extract(image, parts[0], d / "p1.ntfs")
    p2 = extract(image, parts[1], d / "p2.ntfs")
    launcher = content.find_distlib_launcher().read_bytes()

    volumes = ((p1, parts[0], "System Reserved"), (p2, parts[1], "Windows"))
    for (part_file, part, label), lp in zip(volumes, layout["partitions"], strict=True):
        boot = part_file.read_bytes()[:512]
        assert boot[3:11] == b"NTFS    "
        assert struct.unpack_from("<H", boot, 0x0B)[0] == 512
        assert boot[0x0D] * 512 == 4096  # cluster size
        assert struct.unpack_from("<HHI", boot, 0x18) == (63, 255, part["start"])
        info = run("ntfsinfo", "-f", "-m", str(part_file)).stdout
        assert re.search(rf"Volume Name: {label}\s*$", info, re.M), info
        serial = f"{struct.unpack_from('<Q', boot, 0x48)[0]:016X}"
        assert serial == lp["serial"]
    assert layout["partitions"][0]["serial"] != layout["partitions"][1]["serial"]

    assert ntfscat(p1, "/Boot/BCD") == bcd
    assert len(ntfscat(p1, "/bootmgr")) > 0
    assert ntfscat(p2, "/Windows/System32/winload.exe") == launcher
    assert len(ntfscat(p2, "/Windows/System32/config/SYSTEM")) > 0
    assert b"Welcome.png" in ntfscat(p2, "/inetpub/wwwroot/iisstart.htm")
    welcome = ntfscat(p2, "/inetpub/wwwroot/Welcome.png")
    assert sha256(welcome) == sha256(png) == layout["files"]["2:/inetpub/wwwroot/Welcome.png"]
    assert ntfscat(p2, "/" + AGENT_EXE) == launcher
    assert "/" + AGENT_EXE not in ntfs_tree(p1)

    # every file the layout claims is there with that digest, and no others
    tree = {1: ntfs_tree(p1), 2: ntfs_tree(p2)}
    claimed = {}
    for key, digest in layout["files"].items():
        number, path = key.split(":", 1)
        claimed.setdefault(int(number), set()).add(path)
        assert sha256(ntfscat({"1": p1, "2": p2}[number], path)) == digest, key
    for number, paths in tree.items():
        files = {p for p in paths if not any(q.startswith(p + "/") for q in paths)}
        assert files == claimed[number]


def test_windows_agent_placement_options(tmp_path):
    need(*WIN_TOOLS)
    if not os.path.exists("/dev/fuse"):
        pytest.skip("ntfs-3g needs /dev/fuse to populate NTFS volumes")
    layout = windows.build_windows_disk(
        tmp_path / "sys.raw", 64 * MiB, agent_on_system_partition=True, system_size=16 * MiB
    )
    assert f"1:/{AGENT_EXE}" in layout["files"] and f"2:/{AGENT_EXE}" not in layout["files"]
    parts = sfdisk_json(tmp_path / "sys.raw")["partitions"]
    p1 = extract(tmp_path / "sys.raw", parts[0], tmp_path / "p1")
    p2 = extract(tmp_path / "sys.raw", parts[1], tmp_path / "p2")
    assert ntfscat(p1, "/" + AGENT_EXE) == content.find_distlib_launcher().read_bytes()
    assert not any("WindowsAzure" in p for p in ntfs_tree(p2))

    layout = windows.build_windows_disk(tmp_path / "none.raw", 64 * MiB, agent=False)
    assert not any("WindowsAzure" in k for k in layout["files"])
    parts = sfdisk_json(tmp_path / "none.raw")["partitions"]
    p2 = extract(tmp_path / "none.raw", parts[1], tmp_path / "n2")
    tree = ntfs_tree(p2)
    assert "/inetpub/wwwroot/Welcome.png" in tree
    assert not any("WindowsAzure" in p for p in tree)


# --------------------------------------------------------------------------
# Linux disk
# --------------------------------------------------------------------------

LINUX_TOOLS = ("mkfs.ext4", "mkfs.vfat", "mmd", "mcopy", "sfdisk")
CHECK_TOOLS = ("e2fsck", "debugfs", "dumpe2fs", "mdir", "mtype", "fsck.vfat")
WAAGENT = "2.10.0.8"


@pytest.fixture(scope="module")
def linux_disk(tmp_path_factory):
    need(*LINUX_TOOLS, *CHECK_TOOLS)
    d = tmp_path_factory.mktemp("linux")
    layout = linux.build_linux_disk(d / "linux.raw", DISK_SIZE, waagent_version=WAAGENT)
    parts = sfdisk_json(d / "linux.raw")["partitions"]
    esp = extract(d / "linux.raw", parts[0], d / "esp.vfat")
    root = extract(d / "linux.raw", parts[1], d / "root.ext4")
    return d, d / "linux.raw", layout, esp, root


def debugfs_read(root: Path, path: str) -> bytes:
    proc = subprocess.run(
        [_tool("debugfs"), "-R", f"cat {path}", str(root)], capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def debugfs_cat(root: Path, path: str) -> str:
    return debugfs_read(root, path).decode()


def test_linux_partition_table(linux_disk):
    d, image, layout, _, _ = linux_disk
    table = sfdisk_json(image)
    assert table["label"] == "gpt"
    assert table["id"] == linux.DEFAULT_LINUX_DISK_GUID
    parts = table["partitions"]
    assert [p["type"] for p in parts] == [partitions.GPT_TYPE_ESP, partitions.GPT_TYPE_LINUX_DATA]
    assert [p["uuid"] for p in parts] == [linux.DEFAULT_ESP_PARTUUID, linux.DEFAULT_ROOT_PARTUUID]
    assert parts[0]["start"] == 2048
    assert all(p["start"] % 2048 == 0 for p in parts)
    assert table["lastlba"] >= parts[1]["start"] + parts[1]["size"] - 1
    for p, lp in zip(parts, layout["partitions"], strict=True):
        assert (p["start"] * 512, p["size"] * 512) == (lp["start"], lp["size"])
    # protective MBR + primary and backup GPT headers
    with open(image, "rb") as f:
        mbr = f.read(1024)
        f.seek(DISK_SIZE - 512)
        backup = f.read(512)
    assert mbr[446 + 4] == 0xEE and mbr[510:512] == b"\x55\xaa"
    assert mbr[512:520] == b"EFI PART" and backup[:8] == b"EFI PART"
    assert image.stat().st_blocks * 512 < DISK_SIZE // 4


def test_linux_root_fs(linux_disk):
    d, image, layout, _, root = linux_disk
    run("e2fsck", "-fn", str(root))
    header = run("dumpe2fs", "-h", str(root)).stdout
    root_uuid = re.search(r"^Filesystem UUID:\s*(\S+)", header, re.M).group(1)
    assert root_uuid == linux.DEFAULT_ROOT_UUID == layout["partitions"][1]["uuid"]
    assert "extent" in re.search(r"^Filesystem features:(.*)$", header, re.M).group(1)

    os_release = debugfs_cat(root, "/etc/os-release")
    assert 'VERSION_ID="12"' in os_release and "ID=debian" in os_release
    fstab = debugfs_cat(root, "/etc/fstab")
    esp_uuid = layout["partitions"][0]["uuid"]
    assert re.search(rf"^UUID={root_uuid}\s+/\s+ext4", fstab, re.M), fstab
    assert re.search(rf"^UUID={esp_uuid}\s+/boot/efi\s+vfat", fstab, re.M), fstab
    grub = debugfs_cat(root, "/boot/grub/grub.cfg")
    assert re.search(
        rf"^\s*linux\s+/boot/vmlinuz-6\.1\.0-18-amd64 root=UUID={root_uuid} ", grub, re.M
    ), grub
    assert len(debugfs_read(root, "/boot/vmlinuz-6.1.0-18-amd64")) > 1024

    version_py = debugfs_cat(
        root, "/usr/lib/python3/dist-packages/azurelinuxagent/common/version.py"
    )
    assert f"AGENT_VERSION = '{WAAGENT}'" in version_py
    pkg_info = debugfs_cat(
        root, f"/usr/lib/python3/dist-packages/WALinuxAgent-{WAAGENT}.egg-info/PKG-INFO"
    )
    assert "Name: WALinuxAgent" in pkg_info and f"Version: {WAAGENT}" in pkg_info
    waagent = debugfs_cat(root, "/usr/sbin/waagent")
    assert waagent.startswith("#!") and "azurelinuxagent.agent" in waagent
    assert "ExecStart=/usr/sbin/waagent" in debugfs_cat(
        root, "/lib/systemd/system/walinuxagent.service"
    )
    assert "Provisioning." in debugfs_cat(root, "/etc/waagent.conf")
    stat = run("debugfs", "-R", "stat /usr/sbin/waagent", str(root)).stdout
    assert re.search(r"Mode:\s+0755", stat) and re.search(r"User:\s+0\s+Group:\s+0", stat), stat

    for key, digest in layout["files"].items():
        number, path = key.split(":", 1)
        if number == "2":
            assert sha256(debugfs_read(root, path)) == digest, key


def test_linux_esp(linux_disk):
    d, image, layout, esp, _ = linux_disk
    run("fsck.vfat", "-n", str(esp))
    listing = run("mdir", "-i", str(esp), "::/EFI/BOOT").stdout
    assert re.search(r"BOOTX64\s+EFI\s+1024\b", listing), listing
    assert "Volume Serial Number is 1A2B-3C4D" in listing
    efi = subprocess.run(
        [_tool("mtype"), "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI"],
        capture_output=True,
        check=True,
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"),
    ).stdout
    assert efi == content.make_efi_stub()
    grub = run("mtype", "-i", str(esp), "::/EFI/debian/grub.cfg").stdout
    assert f"search.fs_uuid {linux.DEFAULT_ROOT_UUID} root" in grub
    assert "configfile $prefix/grub.cfg" in grub
    # FAT32 boot sector: hidden sectors == partition start
    boot = esp.read_bytes()[:512]
    assert boot[0x52:0x5A] == b"FAT32   "
    assert struct.unpack_from("<I", boot, 0x1C)[0] == layout["partitions"][0]["start"] // 512


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def test_cli_linux(tmp_path):
    need(*LINUX_TOOLS)
    out = tmp_path / "cli.raw"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fixtures", "linux", str(out), "--size", "96M"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    layout = json.loads(proc.stdout)
    assert out.stat().st_size == 96 * MiB == layout["disk"]["size"]
    assert [p["fs"] for p in layout["partitions"]] == ["vfat", "ext4"]
    assert len(sfdisk_json(out)["partitions"]) == 2


def test_cli_rejects_bad_size(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fixtures", "windows", str(tmp_path / "x")]
        + ["--size", "huge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and not (tmp_path / "x").exists()
