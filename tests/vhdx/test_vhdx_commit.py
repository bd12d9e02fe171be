"""vhdfs commit of an .avhdx into its VHDX parent: the model, qemu-img and libvhdi agree,
identities (the parent's new DataWriteGuid, the child still valid, siblings refused),
zero-state blocks, --delete-child, the mid-commit marks and their repair, refusals."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vhdx_write_model import _apply_writes, write_op
from vhdxwriter import Block, Vhdx, parent_locator_for, write_vhdx

from tests.tooling import need, vhdimount
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.errors import ParentMismatch
from vhdfs.maintain.check import check_image
from vhdfs.maintain.commit import commit
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.journals import journal_path
from vhdfs.maintain.journals_vhdx import read_vhdx_journal
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.layer import VhdxLayer

MiB = 1 << 20
SIZE = 6 * MiB


def vhdfs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def flat(path: Path, options: OpenOptions | None = None, *, crashed: bool = False) -> bytes:
    """The chain's flat disk; it opens without a warning (`crashed`: but a log to replay)."""
    with open_chain(str(path), options) as chain:
        assert all(crashed and "not yet replayed" in w for w in chain.warnings), chain.warnings
        return chain.read(0, chain.size)


def layer_of(path: Path) -> VhdxLayer:
    return VhdxLayer(LocalFile(path))


def ids(path: Path) -> tuple[bytes, tuple[bytes, ...]]:
    """(DataWriteGuid, parent linkages) of a VHDX file."""
    with layer_of(path) as layer:
        return layer.unique_id, layer.parent_ids


def qemu_check(path: Path) -> subprocess.CompletedProcess:
    need("qemu-img")
    return subprocess.run(["qemu-img", "check", "-f", "vhdx", str(path)], capture_output=True,
                          text=True)


def qemu_flat(path: Path, folder: Path) -> bytes:
    need("qemu-img")
    raw = folder / f"{path.name}.qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vhdx", "-O", "raw", str(path), str(raw)],
                   check=True, capture_output=True)
    data = raw.read_bytes()
    raw.unlink()
    return data


def chain_of(folder: Path, depth: int, *, fixed: bool = False, lss: int = 512,
             block: int = MiB, seed: int = 1, size: int = SIZE) -> tuple[list[Path], bytearray]:
    """base.vhdx and depth-1 checkpoints over it, each written to; (paths top first, model)."""
    rng = random.Random(seed)
    model = bytearray(size)
    base = folder / "base.vhdx"
    create_vhdx(base, size, fixed=fixed, block_size=block, logical_sector_size=lss)
    paths = [base]
    for number in range(depth):
        image = paths[-1]
        if number:
            image = folder / f"cp{number}.avhdx"
            with open_chain(str(paths[-1])) as parent:
                create_vhdx_differencing(image, paths[-1], parent.top, block_size=block)
            paths.append(image)
        ops = [(rng.random(), rng.choice([4096, 8192, 70 * 1024, MiB]), rng.random() < 0.3)
               for _ in range(5)]
        _apply_writes(image, model, ops, rng)
    return paths[::-1], model


# ------------------------------------------------------------------ the model
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(depth=st.integers(2, 4), fixed_base=st.booleans(), lss=st.sampled_from([512, 4096]),
       block_mib=st.sampled_from([1, 2]), size=st.sampled_from([5 * MiB + 3 * 4096, 8 * MiB]),
       layers=st.lists(st.lists(write_op, max_size=5), min_size=4, max_size=4),
       seed=st.integers(0, 2**32 - 1), all_the_way=st.booleans())
def test_commit_of_avhdx_chains_reads_as_the_model(tmp_path_factory, depth, fixed_base, lss,
                                                   block_mib, size, layers, seed, all_the_way):
    """1-3 checkpoints over a fixed or dynamic base, random writes into each; the top is
    committed into its parent (then, with all_the_way, that one into its own, down to the
    base): after each commit the parent's chain reads the model, the committed child still
    reads it over the parent, and qemu-img checks a committed base it can open."""
    folder = tmp_path_factory.mktemp("commit")
    rng = random.Random(seed)
    model = bytearray(size)
    base = folder / "base.vhdx"
    create_vhdx(base, size, fixed=fixed_base, block_size=block_mib * MiB, logical_sector_size=lss)
    _apply_writes(base, model, layers[0], rng)
    paths = [base]
    for number in range(1, depth):
        child = folder / f"cp{number}.avhdx"
        with open_chain(str(paths[-1])) as parent:
            create_vhdx_differencing(child, paths[-1], parent.top, block_size=block_mib * MiB)
        _apply_writes(child, model, layers[number], rng)
        paths.append(child)
    while len(paths) > 1:
        child, parent = paths[-1], paths[-2]
        parent_id = ids(parent)[0]
        result = commit(str(child), quiet=True, warn=lambda text: None)
        assert result.child == str(child) and result.parent == str(parent)
        assert flat(parent) == bytes(model)
        assert flat(child) == bytes(model)  # still a valid child, reading the same
        new_id, child_links = ids(parent)[0], ids(child)[1]
        assert new_id != parent_id and child_links == (new_id,)
        assert not journal_path(parent).exists()
        with layer_of(parent) as layer:
            assert layer.commit_mark is None and layer.describe()["log"] == "clean"
        assert check_image(str(child)).exit_code == 0
        if parent == base and lss == 512:
            assert qemu_check(parent).returncode == 0
        paths.pop()
        if not all_the_way:
            break


def test_commit_into_fixed_and_dynamic_parents_qemu_agrees(tmp_path):
    for fixed in (False, True):
        folder = tmp_path / f"fixed-{fixed}"
        folder.mkdir()
        (child, base), model = chain_of(folder, 2, fixed=fixed, seed=3 + fixed)
        commit(str(child), quiet=True)
        assert flat(base) == bytes(model)
        assert qemu_check(base).returncode == 0, qemu_check(base).stdout
        assert qemu_flat(base, folder) == bytes(model)


def test_commit_into_a_differencing_parent_libvhdi_agrees(tmp_path):
    """qemu opens no VHDX with a parent: libvhdi reads the committed checkpoint chain."""
    (top, mid, base), model = chain_of(tmp_path, 3, seed=7)
    commit(str(top), quiet=True)
    assert flat(mid) == bytes(model)
    with vhdimount(mid, tmp_path / "mnt") as theirs:
        assert theirs.read_bytes() == bytes(model)
    with vhdimount(top, tmp_path / "mnt2") as theirs:  # the committed child, linked to mid's new id
        assert theirs.read_bytes() == bytes(model)


def test_other_children_are_refused_after_the_commit_and_named_before(tmp_path):
    (child, base), model = chain_of(tmp_path, 2, seed=9)
    sibling = tmp_path / "sibling.avhdx"
    with open_chain(str(base)) as parent:
        create_vhdx_differencing(sibling, base, parent.top)
    done = vhdfs("commit", child, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["other_children"] == [str(sibling)]
    assert "new DataWriteGuid" in done.stderr and str(sibling) in done.stderr
    with pytest.raises(ParentMismatch):
        open_chain(str(sibling))
    info = vhdfs("info", sibling)
    assert info.returncode == 4 and "unique id" in info.stderr
    assert flat(child) == bytes(model)


def test_zero_states_of_the_child_become_zeros_in_the_parent(tmp_path):
    """Blocks the child describes as zero, unmapped or undefined read as zeros through it:
    after the commit the parent reads zeros there, also where it held data."""
    parent = Vhdx(size=8 * MiB)
    parent.write(0, b"P" * 4 * MiB)
    write_vhdx(tmp_path / "base.vhdx", parent)
    child = Vhdx(size=8 * MiB, parent_locator=parent_locator_for(
        parent.data_write_guid, relative_path=".\\base.vhdx"))
    child.blocks[1] = Block(fmt.PAYLOAD_BLOCK_ZERO)
    child.blocks[2] = Block(fmt.PAYLOAD_BLOCK_UNMAPPED)
    child.blocks[6] = Block(fmt.PAYLOAD_BLOCK_UNDEFINED)
    child.write(3 * MiB + 512, b"C" * 1024)
    write_vhdx(tmp_path / "c.avhdx", child)
    want = flat(tmp_path / "c.avhdx")
    assert want[MiB:3 * MiB] == bytes(2 * MiB) and want[:MiB] == b"P" * MiB
    commit(str(tmp_path / "c.avhdx"), quiet=True)
    assert flat(tmp_path / "base.vhdx") == want
    assert qemu_flat(tmp_path / "base.vhdx", tmp_path) == want


def test_commit_4k_checkpoint_into_4k_checkpoint(tmp_path):
    (top, mid, base), model = chain_of(tmp_path, 3, lss=4096, block=2 * MiB, seed=11)
    commit(str(top), quiet=True)
    assert flat(mid) == bytes(model)
    commit(str(mid), quiet=True)
    assert flat(base) == bytes(model)
    assert flat(top) == bytes(model)  # the top was linked to mid, which is still itself


def test_delete_child_and_the_command_line(tmp_path):
    (child, base), model = chain_of(tmp_path, 2, seed=13)
    done = vhdfs("commit", child, "--delete-child")
    assert done.returncode == 0, done.stderr
    assert f"committed {child} into {base}" in done.stdout and "deleted" in done.stdout
    assert not child.exists() and not journal_path(base).exists()
    assert flat(base) == bytes(model)


def test_the_child_is_never_written_but_for_its_locator(tmp_path):
    """Only metadata of the child changes (its locator): its data, BAT, bitmaps and
    DataWriteGuid stay, so its own children stay valid."""
    (top, mid, base), model = chain_of(tmp_path, 3, seed=15)
    grandchild = tmp_path / "gc.avhdx"
    with open_chain(str(top)) as chain:
        create_vhdx_differencing(grandchild, top, chain.top)
    with layer_of(mid) as layer:
        before_id = layer.unique_id
        bat = bytes(layer.bat)
    commit(str(mid), quiet=True)
    with layer_of(mid) as layer:
        assert layer.unique_id == before_id and bytes(layer.bat) == bat
    assert flat(grandchild) == bytes(model)


# ------------------------------------------------------------------ marks and repairs
def _interrupted(tmp_path: Path, at_copying: bool = True, *,
                 early: bool = False) -> tuple[Path, Path, bytes]:
    """A commit killed part-way through copying (`early`: right after its first data
    write), or before its first data write."""
    from tests.ops.conftest import run_killed

    (child, base), model = chain_of(tmp_path, 2, seed=17, size=8 * MiB)
    probe = tmp_path / "probe"
    probe.mkdir()
    for path in (child, base):
        shutil.copyfile(path, probe / path.name)
    events = Faults(record=True)
    commit(str(probe / child.name), quiet=True, faults=events, checkpoint_bytes=64 * 1024)
    shutil.rmtree(probe)
    writes = [i for i, what in enumerate(events.log) if what.startswith("write ")]
    journal_writes = [i for i, what in enumerate(events.log) if what.startswith("write .")]
    if at_copying and early:  # the first big write after the journal turned to copying
        point = next(i for i in writes if i > journal_writes[1] and
                     int(events.log[i].split()[1]) >= 64 * 1024) + 1
    elif at_copying:
        point = writes[len(writes) * 2 // 3]
    else:  # after the journal and the child's link, before the journal turns to copying
        point = journal_writes[1]
    assert run_killed(lambda faults: commit(str(child), quiet=True, faults=faults,
                                            checkpoint_bytes=64 * 1024), point) == point
    return child, base, bytes(model)


def test_a_killed_commit_is_marked_resumed_and_readable_by_qemu(tmp_path):
    child, base, model = _interrupted(tmp_path)
    journal = read_vhdx_journal(base)
    assert journal is not None and journal.phase == "copying"
    with layer_of(base) as layer:
        assert layer.commit_mark is not None and layer.unique_id == journal.ids[1]
    assert flat(child, crashed=True) == model  # the same through the half-written parent
    info = vhdfs("info", base, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["layers"][0]["commit_in_progress"]
    checked = vhdfs("check", base)
    assert checked.returncode == 4 and "is unfinished" in checked.stdout
    copy = tmp_path / "copy.vhdx"  # qemu reads a mid-commit parent (its own replay first)
    shutil.copyfile(base, copy)
    subprocess.run(["qemu-img", "check", "-r", "all", str(copy)], capture_output=True)
    assert qemu_check(copy).returncode == 0
    again = vhdfs("commit", child)
    assert again.returncode == 0, again.stderr
    assert "resumed at block" in again.stdout
    assert flat(base) == model and flat(child) == model
    assert vhdfs("check", child).returncode == 0


def test_check_repair_finishes_a_commit_whose_journal_is_lost(tmp_path):
    child, base, model = _interrupted(tmp_path)
    journal_path(base).unlink()
    info = vhdfs("info", base, "--json")  # the mark in its metadata still says so
    state = json.loads(info.stdout)["layers"][0]["commit_in_progress"]
    assert state["child_unique_id"] == fmt.guid_text(ids(child)[0])
    assert state["image_format"] == "vhdx" and "--search DIR" in state["finish"]
    checked = vhdfs("check", base, "--json")
    assert checked.returncode == 4
    finding = next(f for f in json.loads(checked.stdout)["layers"][0]["findings"]
                   if f["code"] == "mid-commit")
    assert "repair" in finding and f"copy the rest of {child}" in finding["repair"]
    repaired = vhdfs("check", base, "--repair")
    assert repaired.returncode == 1, repaired.stdout
    assert flat(base) == model and vhdfs("check", base).returncode == 0
    assert ids(child)[1] == (ids(base)[0],)


def test_check_repair_rolls_back_a_commit_that_copied_nothing(tmp_path):
    child, base, _ = _interrupted(tmp_path, at_copying=False)
    assert read_vhdx_journal(base).phase == "prepared"
    before = read_vhdx_journal(base).ids[0]
    done = vhdfs("check", base, "--repair")
    assert done.returncode == 1 and "roll back" in done.stdout, done.stdout
    assert not journal_path(base).exists() and ids(base)[0] == before
    with layer_of(base) as layer:
        assert layer.commit_mark is None
    assert vhdfs("check", child).returncode == 0  # linked through parent_linkage still


# ------------------------------------------------------------------ refusals
def test_refusals_each_one_line_with_its_code(tmp_path):
    (child, base), _ = chain_of(tmp_path, 2, seed=19)
    original = base.read_bytes()
    not_child = vhdfs("commit", base)
    assert not_child.returncode == 2 and "not a differencing child" in not_child.stderr
    os.chmod(base, 0o444)
    read_only = vhdfs("commit", child)
    assert read_only.returncode == 6 and "the parent cannot be written" in read_only.stderr
    os.chmod(base, 0o644)
    os.chmod(child, 0o444)
    child_ro = vhdfs("commit", child)
    assert child_ro.returncode == 6 and "the child cannot be written" in child_ro.stderr
    os.chmod(child, 0o644)
    with open(base, "r+b") as handle:  # a BAT entry into the metadata region
        handle.seek(3 * MiB + 8 * 5)
        handle.write(fmt.bat_entry(fmt.PAYLOAD_BLOCK_FULLY_PRESENT, 2 * MiB).to_bytes(8, "little"))
    damaged = vhdfs("commit", child)
    assert damaged.returncode == 6 and "unrepaired damage" in damaged.stderr
    assert "check --repair" in damaged.stderr
    for done in (not_child, read_only, child_ro, damaged):
        assert done.stderr.count("\n") <= 1 or "warning" in done.stderr.splitlines()[0]
    with open(base, "r+b") as handle:
        handle.seek(3 * MiB + 8 * 5)
        handle.write(original[3 * MiB + 8 * 5:3 * MiB + 8 * 6])
    assert base.read_bytes() == original  # nothing was written by any refusal


def test_mixed_chains_stay_refused(tmp_path):
    base = tmp_path / "base.vhdx"
    create_vhdx(base, SIZE, block_size=MiB)
    made = vhdfs("create", tmp_path / "child.vhd", "--parent", base)
    assert made.returncode == 6 and not (tmp_path / "child.vhd").exists()
    vhd_base = tmp_path / "vbase.vhd"
    assert vhdfs("create", vhd_base, "--size", "6M").returncode == 0
    avhdx = tmp_path / "c.avhdx"
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(avhdx, base, chain.top)
    relinked = vhdfs("set-parent", avhdx, vhd_base, "--force")
    assert relinked.returncode == 4 and "can only have a VHDX parent" in relinked.stderr
    base.rename(tmp_path / "elsewhere.vhdx")  # only the VHD is offered now
    committed = vhdfs("commit", avhdx, "--parent", vhd_base)
    assert committed.returncode == 4 and "can only have a VHDX parent" in committed.stderr
    assert committed.stderr.count("\n") == 1


def test_refused_while_busy_and_nothing_written(tmp_path):
    """A reader of the parent, a writer of the child: commit, set-parent and check --repair
    are refused with exit 9 naming the holder, and change nothing."""
    from tests.ops.test_locking import Holder
    from vhdfs.sources.locks import Mode

    (child, base), _ = chain_of(tmp_path, 2, seed=21)
    before = {path: path.read_bytes() for path in (child, base)}
    for held, mode, commands in [
            (base, Mode.SHARED, [("commit", child), ("check", "--repair", base)]),
            (child, Mode.EXCLUSIVE, [("commit", child), ("set-parent", child, base),
                                     ("check", "--repair", child), ("check", child)])]:
        holder = Holder(held, mode)
        try:
            for args in commands:
                done = vhdfs(*args)
                assert done.returncode == 9, (args, done.stdout, done.stderr)
                assert f"(pid {holder.pid}" in done.stdout + done.stderr, (args, done.stderr)
        finally:
            holder.release()
    assert {path: path.read_bytes() for path in (child, base)} == before
    assert not journal_path(base).exists()


def test_a_set_parent_between_a_kill_and_the_rerun_does_not_cut_the_copy_short(tmp_path):
    """The child re-linked to the parent's new DataWriteGuid alone by set-parent while its
    commit is unfinished: the rerun still copies what was left (the child changed: all)."""
    child, base, model = _interrupted(tmp_path, early=True)
    assert flat(base, crashed=True) != model  # the parent holds only part of the child
    relinked = vhdfs("set-parent", child, base)
    assert relinked.returncode == 0, relinked.stderr
    assert ids(child)[1] == (ids(base)[0],)
    again = vhdfs("commit", child)
    assert again.returncode == 0, again.stderr
    assert flat(base) == model and flat(child) == model
