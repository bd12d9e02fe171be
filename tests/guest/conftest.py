"""Fixtures of the guest tests: small Windows-like and Linux-like disks built by tools/, and VHD
chains over them whose layers each replace Welcome.png (as an operator's update would)."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.content import make_png
from tests.fixtures.linux import build_linux_disk
from tests.fixtures.ntfsedit import replace_ntfs_files
from tests.fixtures.windows import build_windows_disk
from vhdfs.cli import main
from vhdfs.resolve import OpenOptions, open_chain

MiB = 1024 * 1024
DISK_SIZE = 64 * MiB
SYSTEM_SIZE = 16 * MiB
WELCOME = "inetpub/wwwroot/Welcome.png"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Run:
    code: int
    out: str
    err: str
    raw: bytes


@pytest.fixture
def vhdfs(capsysbinary):
    """Run the vhdfs command in-process: vhdfs("ls", image) -> Run(code, out, err, raw out)."""
    def run(*argv: str) -> Run:
        capsysbinary.readouterr()
        code = main([str(a) for a in argv])
        captured = capsysbinary.readouterr()
        return Run(code, captured.out.decode(errors="replace"),
                   captured.err.decode(errors="replace"), captured.out)
    return run


def windows_disk(path: Path, **kwargs) -> dict:
    kwargs.setdefault("system_size", SYSTEM_SIZE)
    return build_windows_disk(path, kwargs.pop("size", DISK_SIZE), **kwargs)


@pytest.fixture(scope="session")
def windows_raw(tmp_path_factory) -> tuple[Path, dict]:
    """The good Windows-like sample: MBR, System Reserved + Windows, agent on volume 2."""
    path = tmp_path_factory.mktemp("win") / "windows.raw"
    layout = windows_disk(path, welcome_png=make_png(64, 48, 1))
    return path, layout


@pytest.fixture(scope="session")
def linux_raw(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("lin") / "linux.raw"
    return path, build_linux_disk(path, DISK_SIZE)


@dataclass
class WindowsChain:
    folder: Path
    layers: list[Path]  # base first
    pngs: list[bytes]  # the Welcome.png each layer shows (base first)


def convert(raw: Path, out: Path) -> None:
    assert main(["-q", "convert", str(raw), str(out), "--to", "dynamic"]) == 0


def add_child(parent: Path, child: Path, files: dict[str, bytes | None], volume: int = 2) -> int:
    """A differencing child of `parent` in which ntfs-3g wrote `files` (None deletes)."""
    assert main(["-q", "create", str(child), "--parent", str(parent)]) == 0
    with open_chain(str(child), OpenOptions(), writable=True) as chain:
        return replace_ntfs_files(chain, volume, files)


@pytest.fixture(scope="session")
def windows_chain(tmp_path_factory, windows_raw) -> WindowsChain:
    """base.vhd (dynamic) <- child.vhd <- grandchild.vhd, each with its own Welcome.png."""
    folder = tmp_path_factory.mktemp("chain")
    raw, _ = windows_raw
    pngs = [make_png(64, 48, 1), make_png(80, 60, 2), make_png(96, 72, 3)]
    convert(raw, folder / "base.vhd")
    add_child(folder / "base.vhd", folder / "child.vhd", {WELCOME: pngs[1]})
    add_child(folder / "child.vhd", folder / "grandchild.vhd", {WELCOME: pngs[2]})
    return WindowsChain(folder, [folder / "base.vhd", folder / "child.vhd",
                                 folder / "grandchild.vhd"], pngs)


@pytest.fixture
def chain_copy(tmp_path, windows_chain) -> Path:
    """A private base.vhd (a copy) + child.vhd (made anew, so that none of its locators leads to
    the shared chain): tests may add to it or break it."""
    shutil.copyfile(windows_chain.folder / "base.vhd", tmp_path / "base.vhd")
    add_child(tmp_path / "base.vhd", tmp_path / "child.vhd", {WELCOME: windows_chain.pngs[1]})
    return tmp_path
