"""Host paths that are not valid UTF-8: a one-line refusal naming the path, never an internal
error, and nothing written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

RAW_FOLDER = b"disks\xff"  # Latin-1 leftovers: not UTF-8


def vhdfs(*args: str | bytes | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it, arguments as raw bytes."""
    argv = [os.fsencode(a) for a in args]
    return subprocess.run([os.fsencode(sys.executable), b"-m", b"vhdfs", *argv],
                          capture_output=True, cwd=cwd, timeout=60)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def odd_parent(tmp_path: Path) -> Path:
    """A base disk in a folder whose name is not UTF-8."""
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), RAW_FOLDER)))
    folder.mkdir()
    done = vhdfs("create", folder / "base.vhd", "--size", "8M")
    assert done.returncode == 0, done.stderr
    return folder / "base.vhd"


def refusal(done: subprocess.CompletedProcess, tmp_path: Path) -> str:
    assert done.returncode == 2, done.stderr
    err = done.stderr.decode()  # the message itself is ASCII: the raw byte is escaped
    assert err.count("\n") == 1 and err.startswith("vhdfs: error: ")
    assert f"{tmp_path}/disks\\377/base.vhd: the parent's path is not valid UTF-8" in err
    assert "rename the parent" in err
    return err


def test_create_refuses_a_parent_path_that_is_not_utf8(tmp_path, odd_parent):
    done = vhdfs("create", tmp_path / "child.vhd", "--parent", odd_parent)
    refusal(done, tmp_path)
    assert not (tmp_path / "child.vhd").exists()
    assert [p.name for p in tmp_path.iterdir()] == [odd_parent.parent.name]  # no partial file


def test_set_parent_refuses_a_parent_path_that_is_not_utf8(tmp_path, odd_parent):
    assert vhdfs("create", tmp_path / "base.vhd", "--size", "8M").returncode == 0
    child = tmp_path / "child.vhd"
    assert vhdfs("create", child, "--parent", tmp_path / "base.vhd").returncode == 0
    # the same disk (same unique id) in the odd folder: only its path is in the way
    odd_parent.write_bytes((tmp_path / "base.vhd").read_bytes())
    before = digest(child)
    refusal(vhdfs("set-parent", child, odd_parent), tmp_path)
    assert digest(child) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["base.vhd", "child.vhd", odd_parent.parent.name])  # no journal left behind
    assert vhdfs("info", child).returncode == 0
