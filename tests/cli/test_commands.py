"""The info, create and convert commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vhdfs.cli import main


def vhdfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_create_chain_and_info(tmp_path):
    assert vhdfs("create", "base.vhd", "--size", "64M", cwd=tmp_path).returncode == 0
    assert vhdfs("create", "child.vhd", "--parent", "base.vhd", cwd=tmp_path).returncode == 0
    result = vhdfs("info", "child.vhd", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    top, base = info["layers"]
    assert top["disk_type"] == "differencing" and base["disk_type"] == "dynamic"
    assert top["parent_id"] == base["unique_id"]
    assert top["parent_found"]["by"] == "W2ru" and top["parent_found"]["path"].endswith("base.vhd")
    assert {loc["code"] for loc in top["locators"]} == {"W2ru", "W2ku", "MacX"}
    assert top["virtual_size"] == 64 << 20 and top["block_size"] == 2 << 20
    text = vhdfs("info", "child.vhd", cwd=tmp_path).stdout
    assert "parent found" in text and "(top)" in text and "(base)" in text


def test_create_fixed_and_block_size(tmp_path):
    assert main(["create", str(tmp_path / "f.vhd"), "--size", "3M", "--fixed"]) == 0
    assert (tmp_path / "f.vhd").stat().st_size == 3 * 1024 * 1024 + 512
    assert main(["create", str(tmp_path / "d.vhd"), "--size", "3M", "--block-size", "512K"]) == 0
    result = vhdfs("info", str(tmp_path / "d.vhd"), "--json")
    assert json.loads(result.stdout)["layers"][0]["block_size"] == 512 * 1024


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--size", "1000"], 2, "not a multiple of 512"),
    (["--size", "lots"], 2, "is not a size"),
    (["--size", "8M", "--block-size", "1536"], 2, "power of two"),
    ([], 2, "needs --size"),
])
def test_create_usage_errors(tmp_path, args, code, text):
    result = vhdfs("create", str(tmp_path / "x.vhd"), *args)
    assert result.returncode == code
    assert result.stderr.count("\n") == 1 and text in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.vhd").exists()


def test_create_refuses_to_overwrite(tmp_path):
    target = tmp_path / "x.vhd"
    target.write_bytes(b"precious")
    result = vhdfs("create", str(target), "--size", "1M")
    assert result.returncode == 6 and "already exists" in result.stderr
    assert target.read_bytes() == b"precious"
    assert vhdfs("create", str(target), "--size", "1M", "--force").returncode == 0


def test_missing_parent_names_places_and_fix(tmp_path):
    vhdfs("create", "base.vhd", "--size", "8M", cwd=tmp_path)
    vhdfs("create", "child.vhd", "--parent", "base.vhd", cwd=tmp_path)
    (tmp_path / "base.vhd").rename(tmp_path / "moved.vhd")
    result = vhdfs("info", "child.vhd", cwd=tmp_path)
    assert result.returncode == 4
    line = result.stderr.strip()
    assert "\n" not in line
    assert "parent base.vhd not found" in line and "--parent" in line and "set-parent" in line
    assert str(tmp_path / "base.vhd") in line  # every place tried is named
    ok = vhdfs("info", "child.vhd", "--parent", "moved.vhd", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "lib").mkdir()
    (tmp_path / "moved.vhd").rename(tmp_path / "lib" / "base.vhd")
    assert vhdfs("info", "child.vhd", "--search", "lib", cwd=tmp_path).returncode == 0


def test_convert_all_targets_and_raw_import(tmp_path):
    raw = bytearray(5 * 1024 * 1024 + 1000)  # not a sector multiple: padded on import
    raw[4096:8192] = b"z" * 4096
    raw[-10:] = b"tail-bytes"
    (tmp_path / "in.raw").write_bytes(bytes(raw))
    padded = bytes(raw) + bytes(-len(raw) % 512)
    assert main(["convert", str(tmp_path / "in.raw"), str(tmp_path / "d.vhd"), "--to", "dynamic"]) == 0
    assert main(["convert", str(tmp_path / "d.vhd"), str(tmp_path / "f.vhd"), "--to", "fixed"]) == 0
    assert main(["convert", str(tmp_path / "f.vhd"), str(tmp_path / "o.raw"), "--to", "raw"]) == 0
    assert (tmp_path / "o.raw").read_bytes() == padded
    assert (tmp_path / "f.vhd").read_bytes()[:len(padded)] == padded
    result = vhdfs("convert", str(tmp_path / "d.vhd"), str(tmp_path / "o.raw"), "--to", "raw")
    assert result.returncode == 6  # exists
    result = vhdfs("convert", str(tmp_path / "d.vhd"), str(tmp_path / "d.vhd"), "--to", "dynamic",
                   "--force")
    assert result.returncode == 6 and "part of the chain" in result.stderr


def test_info_on_a_raw_file_is_a_clear_error(tmp_path):
    (tmp_path / "x.raw").write_bytes(bytes(4096))
    result = vhdfs("info", str(tmp_path / "x.raw"))
    assert result.returncode == 3 and "cookie" in result.stderr and "Traceback" not in result.stderr


def test_messages_never_carry_control_characters(monkeypatch, capsys):
    from vhdfs.cli.commands import info
    from vhdfs.errors import ChainError

    def broken(args):
        raise ChainError("child.vhd: parent evil\x1b[2J\x07name.vhd not found")

    monkeypatch.setattr(info, "run", broken)
    assert main(["info", "child.vhd"]) == 4
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err.startswith("vhdfs: error: child.vhd: parent evil") and err.count("\n") == 1


def test_block_size_too_small_for_the_table_is_refused(tmp_path):
    result = vhdfs("create", str(tmp_path / "big.vhd"), "--size", "2040G", "--block-size", "256K")
    assert result.returncode == 2 and "--block-size 524288 or larger" in result.stderr
    assert not (tmp_path / "big.vhd").exists()
