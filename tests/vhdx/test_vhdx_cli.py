"""The command line writes VHDX: create and convert pick the format from the name or --format,
refuse names that disagree, and make what qemu-img and our reader accept."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tooling import need
from vhdfs.resolve import open_chain

MiB = 1 << 20


def vhdfs(*args: object, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def qemu_format(path) -> str:
    need("qemu-img")
    info = subprocess.run(["qemu-img", "info", str(path)], capture_output=True, text=True,
                          check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("file format"))


@pytest.mark.parametrize(("name", "args", "kind", "block"), [
    ("d.vhdx", [], "DYNAMIC", 32 * MiB),
    ("f.vhdx", ["--fixed"], "FIXED", 32 * MiB),
    ("b.vhdx", ["--block-size", "1M", "--logical-sector-size", "4096"], "DYNAMIC", MiB),
    ("other.img", ["--format", "vhdx"], "DYNAMIC", 32 * MiB),
])
def test_create_makes_a_vhdx_when_the_name_or_format_says_so(tmp_path, name, args, kind, block):
    done = vhdfs("create", tmp_path / name, "--size", "64M", *args)
    assert done.returncode == 0, done.stderr
    assert "VHDX" in done.stdout
    with open_chain(str(tmp_path / name)) as chain:
        assert chain.top.describe()["format"] == "vhdx"
        assert chain.top.disk_type.name == kind and chain.top.block_size == block
        assert chain.size == 64 * MiB
    if "4096" not in args:  # qemu reads 512-byte sectors only
        assert qemu_format(tmp_path / name) == "vhdx"


def test_create_keeps_making_vhd_for_vhd_names(tmp_path):
    done = vhdfs("create", tmp_path / "d.vhd", "--size", "64M")
    assert done.returncode == 0, done.stderr
    assert qemu_format(tmp_path / "d.vhd") == "vpc"


def test_create_a_checkpoint_over_a_vhdx_and_refusals(tmp_path):
    assert vhdfs("create", tmp_path / "base.vhdx", "--size", "16M").returncode == 0
    assert vhdfs("create", tmp_path / "base.vhd", "--size", "16M").returncode == 0
    done = vhdfs("create", tmp_path / "cp.avhdx", "--parent", tmp_path / "base.vhdx")
    assert done.returncode == 0, done.stderr
    assert "differencing VHDX" in done.stdout
    with open_chain(str(tmp_path / "cp.avhdx")) as chain:
        assert [layer.describe()["format"] for layer in chain.layers] == ["vhdx", "vhdx"]
        assert chain.links[0].found_by == "relative_path"
    refusals = [
        (["create", tmp_path / "x.avhdx", "--parent", tmp_path / "base.vhd"], 6,
         "can only have a VHDX parent"),
        (["create", tmp_path / "x.vhd", "--parent", tmp_path / "base.vhdx"], 6,
         "can only have a VHD parent"),
        (["create", tmp_path / "x.vhd", "--size", "16M", "--format", "vhdx"], 2,
         "the name says VHD but --format says VHDX"),
        (["create", tmp_path / "x.vhdx", "--size", "16M", "--block-size", "512K"], 2,
         "from 1M to 256M"),
        (["create", tmp_path / "x.vhd", "--size", "16M", "--logical-sector-size", "4096"], 2,
         "needs a VHDX"),
        (["create", tmp_path / "x.vhdx", "--size", "1000"], 2, "not a multiple"),
    ]
    for args, code, text in refusals:
        done = vhdfs(*args)
        assert done.returncode == code and text in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize(("name", "args", "kind"), [
    ("a.vhdx", ["--to", "vhdx"], "DYNAMIC"),
    ("b.vhdx", ["--to", "vhdx", "--fixed"], "FIXED"),
    ("c.vhdx", ["--to", "dynamic"], "DYNAMIC"),
    ("d.vhdx", ["--to", "fixed"], "FIXED"),
    ("e.disk", ["--to", "fixed", "--format", "vhdx"], "FIXED"),
])
def test_convert_to_vhdx(tmp_path, name, args, kind):
    source = tmp_path / "src.vhd"
    assert vhdfs("create", source, "--size", "8M").returncode == 0
    with open_chain(str(source), writable=True) as chain:
        chain.write(3 * MiB + 100, b"data" * 1000)
    done = vhdfs("convert", source, tmp_path / name, *args)
    assert done.returncode == 0, done.stderr
    assert f"{kind.lower()} VHDX" in done.stdout
    with open_chain(str(tmp_path / name)) as chain, open_chain(str(source)) as original:
        assert chain.top.disk_type.name == kind
        assert chain.read(0, 8 * MiB) == original.read(0, 8 * MiB)
    assert qemu_format(tmp_path / name) == "vhdx"


@pytest.mark.parametrize(("name", "args", "text"), [
    ("x.vhd", ["--to", "vhdx"], "the name says VHD but --to vhdx says VHDX"),
    ("x.vhdx", ["--to", "raw"], "the name says VHDX but --to raw"),
    ("x.vhdx", ["--to", "dynamic", "--format", "vhd"], "the name says VHDX but --format says VHD"),
    ("x.vhd", ["--to", "fixed", "--fixed"], "--fixed is for VHDX output"),
    ("x.vhdx", ["--to", "dynamic", "--fixed"], "contradict"),
    ("x.vhdx", ["--to", "vhdx", "--block-size", "64K"], "from 1M to 256M"),
])
def test_convert_refuses_names_and_options_that_disagree(tmp_path, name, args, text):
    source = tmp_path / "src.vhd"
    assert vhdfs("create", source, "--size", "8M").returncode == 0
    done = vhdfs("convert", source, tmp_path / name, *args)
    assert done.returncode == 2 and text in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / name).exists()
