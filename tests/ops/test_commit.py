"""vhdfs commit: the parent ends up reading as the chain did, only the child's runs are
copied, and everything that should be refused is refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ops.conftest import (
    KiB,
    MiB,
    build_chain,
    fill,
    flat,
    libvhdi_unreliable_sectors,
    make_base,
    make_child,
    random_writes,
    same_except,
    vhdfs,
)
from tests.tooling import vhdimount
from vhdfs.errors import ParentMismatch, RefusedError, UsageError
from vhdfs.image import SECTOR, RunKind
from vhdfs.maintain.commit import commit
from vhdfs.maintain.journals import journal_path
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import UNALLOCATED, Layer


@pytest.mark.parametrize("parent_kind", ["dynamic", "fixed", "differencing"])
def test_commit_parent_reads_as_the_chain_did(tmp_path, parent_kind):
    paths = build_chain(tmp_path, parent_kind, seed=len(parent_kind))
    child, parent = paths[0], paths[1]
    before = flat(child)
    parent_before = flat(parent)
    assert before != parent_before  # the child holds something to commit
    with Layer(LocalFile(child)) as layer:
        here = sum(r.length for i in range(layer.block_count) if layer.bat[i] != UNALLOCATED
                   for r in layer.block_runs(i) if r.kind is RunKind.HERE)
    result = commit(str(child), quiet=True)
    assert result.parent == str(parent) and result.bytes_copied == here
    assert flat(parent) == before  # the parent (with its own parents) reads as the chain did
    assert flat(child) == before  # and the child still reads the same over it
    assert not journal_path(parent).exists()
    check = vhdfs("check", parent, "--json")
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["status"] == "clean"


@pytest.mark.parametrize("parent_kind", ["dynamic", "differencing"])
def test_commit_libvhdi_agrees(tmp_path, parent_kind):
    """libvhdi reads the committed parent (and the child over it) as we do, except in the
    sectors its partial-bitmap-byte bug affects."""
    paths = build_chain(tmp_path, parent_kind, seed=7)
    child, parent = paths[0], paths[1]
    before = flat(child)
    commit(str(child), quiet=True)
    for top, layers in ((parent, paths[1:]), (child, paths)):
        skip = libvhdi_unreliable_sectors(layers)
        with vhdimount(top, tmp_path / f"mnt-{top.stem}") as theirs:
            seen = theirs.read_bytes()
        assert same_except(before, seen, skip) == []
        assert len(skip) < len(before) // SECTOR // 2  # the comparison covers most of the disk


def test_commit_copies_only_the_childs_runs(tmp_path):
    """A child with one sector in a 64 MiB disk: the parent grows by one block, no more."""
    parent = make_base(tmp_path / "parent.vhd", "dynamic", 64 * MiB, 2 * MiB)
    child = make_child(parent, tmp_path / "child.vhd")
    fill(child, [(40 * MiB + 3 * SECTOR, b"x" * SECTOR)])
    size_before = parent.stat().st_size
    result = commit(str(child), quiet=True)
    assert (result.bytes_copied, result.runs, result.blocks) == (SECTOR, 1, 1)
    with Layer(LocalFile(parent)) as layer:
        assert layer.allocated_blocks() == 1
    assert parent.stat().st_size - size_before <= 2 * MiB + 8 * KiB
    assert flat(parent)[40 * MiB + 3 * SECTOR:40 * MiB + 4 * SECTOR] == b"x" * SECTOR


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), parent_kind=st.sampled_from(["dynamic", "fixed", "differencing"]),
       writes=st.integers(1, 10), size_sectors=st.integers(1024, 8192))
def test_commit_matches_model(tmp_path_factory, seed, parent_kind, writes, size_sectors):
    """Random chains (sizes not a multiple of the block size): after commit the parent reads
    as an in-memory model of child-over-parent."""
    folder = tmp_path_factory.mktemp("model")
    rnd = random.Random(seed)
    size = size_sectors * SECTOR
    if parent_kind == "differencing":
        base = make_base(folder / "base.vhd", "dynamic", size, 512 * KiB)
        parent = make_child(base, folder / "parent.vhd", 256 * KiB)
    else:
        parent = make_base(folder / "parent.vhd", parent_kind, size, 512 * KiB)
    model = bytearray(size)
    for target in ([base, parent] if parent_kind == "differencing" else [parent]):
        for offset, data in random_writes(rnd, size, writes, longest=32 * KiB):
            model[offset:offset + len(data)] = data
            fill(target, [(offset, data)])
    child = make_child(parent, folder / "child.vhd", rnd.choice([None, 512 * KiB, 2 * MiB]))
    for offset, data in random_writes(rnd, size, writes, longest=32 * KiB):
        model[offset:offset + len(data)] = data
        fill(child, [(offset, data)])
    commit(str(child), quiet=True)
    assert flat(parent) == bytes(model)
    assert flat(child) == bytes(model)


def test_commit_command_delete_child_and_progress_lines(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", seed=3)[:2]
    before = flat(child)
    result = vhdfs("commit", child.name, "--delete-child", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"committed {child.name} into" in result.stdout and "deleted" in result.stdout
    assert "commit child.vhd: 100%" in result.stderr  # quiet lines when not on a terminal
    assert not child.exists() and flat(parent) == before


def test_commit_warns_about_other_children(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", seed=4)[:2]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sibling = make_child(parent, elsewhere / "sibling.vhd")
    result = vhdfs("commit", child, cwd=tmp_path)
    assert result.returncode == 0
    assert "none found in" in result.stderr and "--search DIR" in result.stderr
    shutil.copy(child, tmp_path / "child-copy.vhd")  # same parent id: also a child of it
    result = vhdfs("commit", child, "--search", elsewhere)
    assert result.returncode == 0
    assert "become invalid" in result.stderr
    assert str(sibling) in result.stderr and "child-copy.vhd" in result.stderr


def test_commit_refuses_read_only_parent(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", seed=5)[:2]
    before = parent.read_bytes()
    parent.chmod(0o444)
    result = vhdfs("commit", child)
    assert result.returncode == RefusedError.exit_code
    assert "read-only" in result.stderr and str(parent) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert parent.read_bytes() == before and not journal_path(parent).exists()


def test_commit_refuses_parent_on_read_only_file_system(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    child, parent = build_chain(tmp_path / "rw", "dynamic", seed=6)[:2]
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(tmp_path / "rw"), str(ro)]).returncode:
        pytest.skip("bind mounts are not allowed here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        result = vhdfs("commit", ro / "child.vhd")
        assert result.returncode == RefusedError.exit_code, result.stderr
        assert "read-only file system" in result.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_commit_refuses_wrong_parent_identity(tmp_path):
    child = build_chain(tmp_path, "dynamic", seed=8)[0]
    stranger = make_base(tmp_path / "stranger.vhd", "dynamic", 8 * MiB)
    os.replace(stranger, tmp_path / "parent.vhd")  # the right name, the wrong disk
    before = (tmp_path / "parent.vhd").read_bytes()
    with pytest.raises(ParentMismatch, match="expects parent id"):
        commit(str(child), quiet=True)
    result = vhdfs("commit", child)
    assert result.returncode == ParentMismatch.exit_code and "unique id" in result.stderr
    assert (tmp_path / "parent.vhd").read_bytes() == before


def test_commit_refuses_damaged_child(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", seed=9)[:2]
    with Layer(LocalFile(child)) as layer:
        bat_at = layer.header.table_offset
        index = next(i for i, e in enumerate(layer.bat) if e != UNALLOCATED)
    with open(child, "r+b") as handle:  # the block now points far past the end of the file
        handle.seek(bat_at + 4 * index)
        handle.write((0x7FFFFFF0).to_bytes(4, "big"))
    before = parent.read_bytes()
    result = vhdfs("commit", child)
    assert result.returncode == RefusedError.exit_code
    assert "unrepaired damage" in result.stderr and "vhdfs check --repair" in result.stderr
    assert parent.read_bytes() == before


def test_commit_refuses_non_differencing_and_busy_parent(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", seed=10)[:2]
    with pytest.raises(UsageError, match="not a differencing child"):
        commit(str(parent), quiet=True)
    other = make_child(parent, tmp_path / "other.vhd")
    fill(other, [(0, b"o" * 4096)])
    journal_path(parent).write_text(json.dumps({
        "format": "vhdfs-commit-journal", "version": 1, "parent": "parent.vhd",
        "parent_unique_id": "x", "child": str(other), "child_unique_id": "not-this-child",
        "phase": "copying", "next_block": 0, "blocks": 16, "started": "2024-01-01T00:00:00Z"}))
    with pytest.raises(RefusedError, match="is unfinished; finish that first"):
        commit(str(child), quiet=True)
