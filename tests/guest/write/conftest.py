"""Fixtures of the guest-write tests (put, rm, mkdir): disks, and independent readers.

The disks are built by tests/fixtures (mkntfs + ntfs-3g, mkfs.vfat + mtools, mkfs.ext4 -d,
mkfs.exfat) and imported as dynamic base VHDs once per session; each test writes into a
child of its own. What the writes left is read back twice: through vhdfs (cat, ls) and,
independently, by the file system's own tools on the partition's bytes flattened out of the
chain (ntfscat, debugfs, mtools), which also check the file system (e2fsck, fsck.fat).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.common import SECTOR, MiB, new_sparse_file, run_tool
from tests.fixtures.content import make_png
from tests.fixtures.ext import build_ext4_volume
from tests.fixtures.fat import build_fat32_volume
from tests.fixtures.partitions import ALIGN, assemble
from tests.fixtures.windows import build_windows_disk
from vhdfs.cli import main
from vhdfs.partitions import list_partitions
from vhdfs.resolve import OpenOptions, open_chain

FAT_SIZE = 40 * MiB
EXT_SIZE = 16 * MiB
FAT_FILES = {"README.TXT": b"on the FAT volume\n", "Docs/Report.txt": b"quarterly\n"}
EXT_FILES = {"etc/hostname": b"two-volumes\n", "srv/data.bin": b"\x00\xffext" * 5000}
EXT_CONFIG = ("etc/app.conf", b"secret=1\n", 0o600)
WELCOME = "inetpub/wwwroot/Welcome.png"
STEP = 1024 * 1024
ENV = {"MTOOLS_SKIP_CHECK": "1"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(STEP):
            digest.update(chunk)
    return digest.hexdigest()


def vhdfs_run(*args: str | os.PathLike[str], stdin: bytes | None = None,
              env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """vhdfs as a user runs it: a process of its own (its mount daemon forks from it)."""
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], input=stdin,
                          capture_output=True, env={**os.environ, **(env or {})},
                          timeout=300, **kwargs)


@dataclass
class Base:
    path: Path  # base.vhd
    digest: str  # its sha256 as built (tests assert it never changes)


def _base(raw: Path, out: Path) -> Base:
    assert main(["-q", "convert", str(raw), str(out), "--to", "dynamic"]) == 0
    raw.unlink()
    out.chmod(0o644)
    return Base(out, sha256_file(out))


@pytest.fixture(scope="session")
def windows_base(tmp_path_factory) -> Base:
    """The Windows-like disk of the guest tests: volume 1 "System Reserved", volume 2
    "Windows" (NTFS) with inetpub/wwwroot/Welcome.png."""
    folder = tmp_path_factory.mktemp("write-win")
    build_windows_disk(folder / "win.raw", 64 * MiB, system_size=16 * MiB,
                       welcome_png=make_png(64, 48, 1))
    return _base(folder / "win.raw", folder / "base.vhd")


@pytest.fixture(scope="session")
def two_base(tmp_path_factory) -> Base:
    """An MBR disk: volume 1 FAT32 "DATA" (FAT_FILES), volume 2 ext4 "linux" (EXT_FILES and
    EXT_CONFIG, mode 0600)."""
    folder = tmp_path_factory.mktemp("write-two")
    fat, ext = folder / "p1.fat", folder / "p2.ext4"
    fat_start, ext_start = ALIGN, ALIGN + FAT_SIZE
    build_fat32_volume(fat, FAT_SIZE, FAT_FILES, label="DATA", volume_id=0x1234ABCD,
                       hidden_sectors=fat_start // SECTOR)
    path, data, mode = EXT_CONFIG
    build_ext4_volume(ext, EXT_SIZE, {**EXT_FILES, path: (data, mode)},
                      fs_uuid="5d1f6a2c-3b4e-4f60-8a9b-0c1d2e3f4a5b", label="linux")
    table = ("label: dos\n"
             f"start={fat_start // SECTOR}, size={FAT_SIZE // SECTOR}, type=c\n"
             f"start={ext_start // SECTOR}, size={EXT_SIZE // SECTOR}, type=83\n")
    raw = folder / "disk.raw"
    assemble(raw, ALIGN + FAT_SIZE + EXT_SIZE + ALIGN, table,
             [(fat_start, fat), (ext_start, ext)])
    fat.unlink()
    ext.unlink()
    return _base(raw, folder / "base.vhd")


@pytest.fixture(scope="session")
def exfat_base(tmp_path_factory) -> Base:
    """A disk that is one exFAT file system, without a partition table."""
    folder = tmp_path_factory.mktemp("write-exfat")
    raw = folder / "exfat.raw"
    new_sparse_file(raw, 16 * MiB)
    run_tool(["mkfs.exfat", str(raw)])
    return _base(raw, folder / "base.vhd")


@pytest.fixture(scope="session")
def whole_fat_base(tmp_path_factory) -> Base:
    """A disk that is one FAT32 file system, without a partition table (its file in a
    mount is disk.raw, not p1)."""
    folder = tmp_path_factory.mktemp("write-wholefat")
    raw = folder / "fat.raw"
    build_fat32_volume(raw, FAT_SIZE, {"A.TXT": b"a\n"}, label="WHOLE", volume_id=0x0BADF00D,
                       hidden_sectors=0)
    return _base(raw, folder / "base.vhd")


def child_of(base: Base, folder: Path, name: str = "child.vhd") -> Path:
    """A new, empty differencing child of `base` in `folder`."""
    child = folder / name
    assert main(["-q", "create", str(child), "--parent", str(base.path)]) == 0
    return child


def check_base(base: Base) -> None:
    """The parent was never written."""
    assert sha256_file(base.path) == base.digest


def partition_file(image: Path, number: int, out: Path) -> Path:
    """The bytes of partition `number` (0: the whole disk) as a file, read through the
    chain: what the file system's own tools then read on their own."""
    with open_chain(str(image), OpenOptions()) as chain:
        if number:
            part = next(p for p in list_partitions(chain) if p.number == number)
            start, length = part.start, part.length
        else:
            start, length = 0, chain.size
        with open(out, "wb") as handle:
            for offset in range(0, length, STEP):
                handle.write(chain.read(start + offset, min(STEP, length - offset)))
    return out


def ntfs_read(volume: Path, path: str) -> bytes:
    """A file read by ntfsprogs' ntfscat (libntfs-3g, no vhdfs, no mount)."""
    return subprocess.run(["ntfscat", str(volume), path], capture_output=True,
                          check=True).stdout


def ext_read(volume: Path, path: str) -> bytes:
    done = subprocess.run(["debugfs", "-R", f'cat "{path}"', str(volume)], capture_output=True,
                          check=True)
    return done.stdout


def ext_stat(volume: Path, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f'stat "{path}"', str(volume)],
                          capture_output=True, text=True, check=True).stdout


def ext_names(volume: Path, folder: str) -> list[str]:
    """The names in a folder, as debugfs lists them (ls -p: /inode/mode/uid/gid/name/...)."""
    out = subprocess.run(["debugfs", "-R", f'ls -p "{folder}"', str(volume)],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]


def ext_fsck(volume: Path) -> None:
    """e2fsck finds nothing to fix."""
    done = subprocess.run(["e2fsck", "-fn", str(volume)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def fat_read(volume: Path, path: str, scratch: Path) -> bytes:
    out = scratch / "fat-read.out"
    out.unlink(missing_ok=True)
    subprocess.run(["mcopy", "-n", "-i", str(volume), f"::{path}", str(out)], check=True,
                   capture_output=True, env={**os.environ, **ENV})
    return out.read_bytes()


def fat_names(volume: Path, folder: str) -> str:
    return subprocess.run(["mdir", "-i", str(volume), f"::{folder}"], capture_output=True,
                          text=True, check=True, env={**os.environ, **ENV}).stdout


def fat_fsck(volume: Path) -> None:
    done = subprocess.run(["fsck.fat", "-n", str(volume)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
