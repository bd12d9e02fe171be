"""Files vhdfs creates honour the umask, as qemu-img's do (0644 under umask 022, 0600 under
077), and a file replaced with --force keeps its own mode: create, convert, get, and the
journal commit writes next to the parent (vhdfs.sources.modes)."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import GuestDisk
from tests.fixtures.vhdimages import make_child, make_dynamic
from vhdfs.maintain.journals import journal_path
from vhdfs.sources.modes import current_umask, new_file_mode

UMASKS = [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)]


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_changing_it():
    with umask(0o027):
        assert current_umask() == 0o027
        assert new_file_mode() == 0o640
        assert current_umask() == 0o027


def test_a_replaced_regular_file_lends_its_mode_a_link_does_not(tmp_path):
    target = tmp_path / "kept"
    target.write_bytes(b"x")
    target.chmod(0o604)
    (tmp_path / "link").symlink_to(target)
    with umask(0o022):
        assert new_file_mode(target) == 0o604
        assert new_file_mode(tmp_path / "link") == 0o644
        assert new_file_mode(tmp_path / "absent") == 0o644


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_create_and_convert_follow_the_umask(vhdfs, tmp_path, mask, expected):
    with umask(mask):
        assert vhdfs("create", tmp_path / "new.vhd", "--size", "8M").code == 0
        assert vhdfs("create", tmp_path / "new.vhdx", "--size", "8M").code == 0
        assert vhdfs("create", tmp_path / "child.vhd", "--parent", tmp_path / "new.vhd").code == 0
        assert vhdfs("convert", tmp_path / "child.vhd", tmp_path / "flat.raw", "--to",
                     "raw").code == 0
        assert vhdfs("convert", tmp_path / "child.vhd", tmp_path / "flat.vhd", "--to",
                     "fixed").code == 0
    for name in ("new.vhd", "new.vhdx", "child.vhd", "flat.raw", "flat.vhd"):
        assert mode(tmp_path / name) == expected, name


def test_create_and_convert_force_keep_the_mode_of_the_file_they_replace(vhdfs, tmp_path):
    for name in ("new.vhd", "out.raw"):
        (tmp_path / name).write_bytes(b"old")
        (tmp_path / name).chmod(0o640)
    with umask(0o022):
        assert vhdfs("create", tmp_path / "new.vhd", "--size", "8M", "--force").code == 0
        assert vhdfs("convert", tmp_path / "new.vhd", tmp_path / "out.raw", "--to", "raw",
                     "--force").code == 0
    assert mode(tmp_path / "new.vhd") == 0o640
    assert mode(tmp_path / "out.raw") == 0o640
    assert (tmp_path / "out.raw").stat().st_size == 8 * 1024 * 1024


@pytest.mark.parametrize(("mask", "expected"), UMASKS)
def test_get_follows_the_umask(vhdfs, guest_disk: GuestDisk, tmp_path, mask, expected):
    with umask(mask):
        assert vhdfs("get", guest_disk.child, "/etc/hostname", tmp_path / "hostname").code == 0
        assert vhdfs("get", guest_disk.child, "/srv", tmp_path / "srv").code == 0
    assert mode(tmp_path / "hostname") == expected
    assert mode(tmp_path / "srv" / "data.bin") == expected
    assert mode(tmp_path / "srv") == 0o777 & ~mask


def test_get_force_keeps_the_mode_of_the_file_it_replaces(vhdfs, guest_disk, tmp_path):
    dest = tmp_path / "hostname"
    dest.write_bytes(b"old")
    dest.chmod(0o604)
    with umask(0o077):
        assert vhdfs("get", guest_disk.child, "/etc/hostname", dest, "--force").code == 0
    assert dest.read_bytes() == b"two-volumes\n"
    assert mode(dest) == 0o604


@pytest.mark.parametrize(("mask", "expected"), UMASKS[:2])
def test_the_commit_journal_follows_the_umask(tmp_path, mask, expected):
    """commit killed (SIGKILL, VHDFS_FAULT_KILL_AFTER) once its journal is there: the
    journal has the umask's mode."""
    base = make_dynamic(tmp_path / "base.vhd")
    child = make_child(tmp_path / "child.vhd", base)
    journal = journal_path(base)
    for kill_after in range(1, 40):
        done = subprocess.run(
            [sys.executable, "-m", "vhdfs", "commit", str(child)], capture_output=True,
            env={**os.environ, "VHDFS_FAULT_KILL_AFTER": str(kill_after)},
            preexec_fn=lambda: os.umask(mask))  # noqa: PLW1509 - single-threaded test
        if journal.exists():
            break
        assert done.returncode == -9, done.stderr
    else:
        pytest.fail("commit never left its journal behind")
    assert mode(journal) == expected
