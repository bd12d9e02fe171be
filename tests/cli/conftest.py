"""Fixtures of the command-line tests: the command run in-process, and a small disk with two
volumes (FAT32 and ext4, made by mkfs.vfat/mtools and mkfs.ext4 -d: no mount) as a VHD chain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.common import SECTOR, MiB
from tests.fixtures.ext import build_ext4_volume
from tests.fixtures.fat import build_fat32_volume
from tests.fixtures.partitions import ALIGN, assemble
from vhdfs.cli import main

FAT_SIZE = 40 * MiB  # FAT32 needs 65525 clusters: 512-byte clusters make that about 33 MiB
EXT_SIZE = 16 * MiB
DISK_SIZE = ALIGN + FAT_SIZE + EXT_SIZE + ALIGN
FAT_FILES = {"README.TXT": b"on the FAT volume\n", "DOCS/BIG.BIN": bytes(range(256)) * 1200}
EXT_FILES = {"etc/hostname": b"two-volumes\n", "srv/data.bin": b"\x00\xffext" * 5000}


@dataclass
class Run:
    code: int
    out: str
    err: str
    raw: bytes  # standard output as bytes (cat, get -)

    def json(self) -> Any:
        return json.loads(self.out)

    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def vhdfs(capsysbinary):
    """Run the vhdfs command in-process: vhdfs("ls", image) -> Run(code, out, err, raw)."""
    def run(*argv: str | Path) -> Run:
        capsysbinary.readouterr()
        code = main([str(a) for a in argv])
        captured = capsysbinary.readouterr()
        return Run(code, captured.out.decode(errors="replace"),
                   captured.err.decode(errors="replace"), captured.out)
    return run


@dataclass
class GuestDisk:
    folder: Path
    raw: Path
    base: Path  # base.vhd: the raw disk converted to a dynamic VHD
    child: Path  # child.vhd over base.vhd, empty


@pytest.fixture(scope="session")
def guest_disk(tmp_path_factory) -> GuestDisk:
    """An MBR disk: volume 1 FAT32 "DATA", volume 2 ext4 "linux" (see FAT_FILES, EXT_FILES)."""
    folder = tmp_path_factory.mktemp("two-volumes")
    fat, ext = folder / "p1.fat", folder / "p2.ext4"
    fat_start, ext_start = ALIGN, ALIGN + FAT_SIZE
    build_fat32_volume(fat, FAT_SIZE, FAT_FILES, label="DATA", volume_id=0x1234ABCD,
                       hidden_sectors=fat_start // SECTOR)
    build_ext4_volume(ext, EXT_SIZE, EXT_FILES, fs_uuid="5d1f6a2c-3b4e-4f60-8a9b-0c1d2e3f4a5b",
                      label="linux")
    table = ("label: dos\n"
             f"start={fat_start // SECTOR}, size={FAT_SIZE // SECTOR}, type=c\n"
             f"start={ext_start // SECTOR}, size={EXT_SIZE // SECTOR}, type=83\n")
    raw = folder / "disk.raw"
    assemble(raw, DISK_SIZE, table, [(fat_start, fat), (ext_start, ext)])
    fat.unlink()
    ext.unlink()
    assert main(["-q", "convert", str(raw), str(folder / "base.vhd"), "--to", "dynamic"]) == 0
    assert main(["-q", "create", str(folder / "child.vhd"), "--parent",
                 str(folder / "base.vhd")]) == 0
    return GuestDisk(folder, raw, folder / "base.vhd", folder / "child.vhd")
