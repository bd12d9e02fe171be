"""kill -9 during commit, at every write and sync, then run it again: the same parent,
byte for byte, as an uninterrupted commit; the chain reads the same at every moment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.ops.conftest import (
    KiB,
    MiB,
    build_chain,
    cli,
    digest,
    fill,
    flat,
    make_base,
    make_child,
    run_killed,
)
from tests.tooling import vhdimount
from vhdfs.maintain.check import check_image
from vhdfs.maintain.commit import commit
from vhdfs.maintain.faults import ENV_DELAY, ENV_KILL_AFTER, Faults
from vhdfs.maintain.journals import PHASE_PREPARED, journal_path, marker_child_id, read_journal
from vhdfs.resolve import open_chain
from vhdfs.vhd.footer import FOOTER_SIZE, Footer

CHECKPOINT = 64 * KiB  # small, so the runs below cross several checkpoints


def footer_of(path) -> Footer:
    raw = path.read_bytes()[-FOOTER_SIZE:]
    return Footer.parse(raw, str(path), 0)


@pytest.mark.parametrize(("parent_kind", "delete_child", "step"), [
    ("dynamic", False, 1), ("differencing", False, 2), ("fixed", True, 1)])
def test_kill_at_every_point_then_finish(tmp_path, parent_kind, delete_child, step):
    """Every write and sync of the commit (every other one for the 3-layer chain)."""
    origin = tmp_path / "origin"
    build_chain(origin, parent_kind, size=4 * MiB, seed=21, writes=6)
    before = flat(origin / "child.vhd")
    child_digest = digest(origin / "child.vhd")

    reference = tmp_path / "reference"
    shutil.copytree(origin, reference)
    counted = Faults(record=True)
    commit(str(reference / "child.vhd"), quiet=True, faults=counted, checkpoint_bytes=CHECKPOINT,
           delete_child=delete_child)
    wanted = (reference / "parent.vhd").read_bytes()
    assert flat(reference / "parent.vhd") == before
    assert counted.events > 20

    finished_by_check = 0
    for point in range(0, counted.events, step):
        work = tmp_path / f"kill-{point}"
        shutil.copytree(origin, work)
        child, parent = work / "child.vhd", work / "parent.vhd"

        def job(faults, child=child):
            commit(str(child), quiet=True, faults=faults, checkpoint_bytes=CHECKPOINT,
                   delete_child=delete_child)

        assert run_killed(job, point) == point
        # At any moment: the child is whole and the chain through it reads as before.
        if child.exists():
            assert digest(child) == child_digest
            assert flat(child) == before
        with open_chain(str(parent)):
            pass  # the parent is always a readable VHD
        journal = read_journal(parent)
        marked = marker_child_id(footer_of(parent)) is not None
        if journal is not None or marked:
            report = check_image(str(parent))
            assert "mid-commit" in [f.code for f in report.layers[0].findings]
            assert report.exit_code == 4
        if journal is not None and journal.phase != PHASE_PREPARED and (point // step) % 2:
            # vhdfs check --repair finishes it (the child named by the journal)
            assert check_image(str(parent), repair=True).exit_code == 1
            finished_by_check += 1
            if delete_child:
                commit(str(child), quiet=True, delete_child=True)
        elif child.exists():
            commit(str(child), quiet=True, checkpoint_bytes=CHECKPOINT, delete_child=delete_child)
        assert parent.read_bytes() == wanted, f"killed before event {point}: {counted.log[point]}"
        assert not journal_path(parent).exists()
        assert child.exists() != delete_child
        shutil.rmtree(work)
    assert finished_by_check >= 3


def test_real_kill_of_the_command(tmp_path):
    """A real `kill -9` of `vhdfs commit` while it copies (each write slowed down by the
    fault switch so the kill lands mid-way), then the same command again."""
    parent = make_base(tmp_path / "parent.vhd", "dynamic", 32 * MiB, 512 * KiB)
    fill(parent, [(0, os.urandom(2 * MiB))])
    child = make_child(parent, tmp_path / "child.vhd")
    fill(child, [(offset * MiB, os.urandom(768 * KiB)) for offset in range(1, 30, 2)])
    before = flat(child)
    env = dict(os.environ, **{ENV_DELAY: "0.01"})
    proc = subprocess.Popen([sys.executable, "-m", "vhdfs", "-q", "commit", str(child)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = journal_path(parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = read_journal(parent) if journal.exists() else None
        if state is not None and state.phase != PHASE_PREPARED:
            break
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert journal.exists()  # it died mid-commit
    info = subprocess.run([sys.executable, "-m", "vhdfs", "info", str(parent), "--json"],
                          capture_output=True, text=True)
    state = json.loads(info.stdout)["layers"][0]["commit_in_progress"]
    assert state["child"] == str(child) and state["finish"] == f"vhdfs commit {child}"
    text = subprocess.run([sys.executable, "-m", "vhdfs", "info", str(parent)], capture_output=True,
                          text=True).stdout
    assert "mid-commit" in text and f"run vhdfs commit {child}" in text
    assert flat(child) == before
    again = subprocess.run([sys.executable, "-m", "vhdfs", "commit", str(child)],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout
    assert flat(parent) == before and not journal.exists()
    assert marker_child_id(footer_of(parent)) is None


def interrupted(tmp_path, kind: str = "dynamic") -> tuple:
    """A chain whose commit was killed half-way through copying."""
    child, parent = build_chain(tmp_path, kind, size=4 * MiB, seed=31, writes=8)[:2]
    before = flat(child)
    events = Faults(record=True)
    probe = tmp_path / "probe"
    shutil.copytree(tmp_path, probe, ignore=shutil.ignore_patterns("probe"))
    commit(str(probe / "child.vhd"), quiet=True, faults=events, checkpoint_bytes=CHECKPOINT)
    shutil.rmtree(probe)
    middle = [i for i, what in enumerate(events.log) if what.startswith("write")][-8]
    assert run_killed(lambda faults: commit(str(child), quiet=True, faults=faults,
                                            checkpoint_bytes=CHECKPOINT), middle) == middle
    assert marker_child_id(footer_of(parent)) is not None
    return child, parent, before


def test_the_mark_in_the_footer_survives_a_lost_journal(tmp_path):
    """Without its journal (the parent copied elsewhere), the parent still says it is
    mid-commit, and check --repair finds the child by unique id and finishes."""
    child, parent, before = interrupted(tmp_path)
    journal_path(parent).unlink()
    found = cli("info", parent)
    assert found.returncode == 0 and "mid-commit" in found.stdout
    checked = cli("check", parent)
    assert checked.returncode == 4 and "is unfinished" in checked.stdout
    repaired = cli("check", parent, "--repair")
    assert repaired.returncode == 1, repaired.stdout
    assert f"finish the commit: copy the rest of {child}" in repaired.stdout
    assert flat(parent) == before and cli("check", parent).returncode == 0


def test_a_mid_commit_parent_stays_readable_by_qemu_and_libvhdi(tmp_path):
    child, parent, before = interrupted(tmp_path)
    alone = flat(parent)  # the parent on its own: part old, part new, but a valid VHD
    raw = tmp_path / "parent.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(parent), str(raw)],
                   check=True, capture_output=True)
    assert raw.read_bytes()[:len(alone)] == alone
    with vhdimount(parent, tmp_path / "mnt") as theirs:
        assert theirs.read_bytes() == alone
    commit(str(child), quiet=True)
    assert flat(parent) == before


def test_killed_before_the_first_write_is_rolled_back_by_check(tmp_path):
    child, parent = build_chain(tmp_path, "dynamic", size=4 * MiB, seed=41, writes=4)[:2]
    original = parent.read_bytes()
    events = Faults(record=True)
    probe = tmp_path / "probe"
    shutil.copytree(tmp_path, probe, ignore=shutil.ignore_patterns("probe"))
    commit(str(probe / "child.vhd"), quiet=True, faults=events)
    journal_writes = [i for i, what in enumerate(events.log) if what.startswith("write .")]
    second = journal_writes[1]  # the journal turning from "prepared" to "copying"
    assert run_killed(lambda faults: commit(str(child), quiet=True, faults=faults), second) == second
    assert read_journal(parent).phase == PHASE_PREPARED
    assert marker_child_id(footer_of(parent)) is not None
    found = cli("check", parent)
    assert found.returncode == 4 and "nothing was written yet" in found.stdout
    rolled = cli("check", parent, "--repair")
    assert rolled.returncode == 1 and "roll back" in rolled.stdout
    assert parent.read_bytes() == original and not journal_path(parent).exists()


def test_kill_switch_of_the_command(tmp_path):
    """VHDFS_FAULT_KILL_AFTER=N makes `vhdfs commit` kill itself before its N+1-th write or
    sync; running the command again finishes the job."""
    child, parent = build_chain(tmp_path, "differencing", size=4 * MiB, seed=51, writes=6)[:2]
    before = flat(child)
    for point in (12, 20):
        env = dict(os.environ, **{ENV_KILL_AFTER: str(point)})
        killed = subprocess.run([sys.executable, "-m", "vhdfs", "-q", "commit", str(child)], env=env,
                                capture_output=True)
        assert killed.returncode == -signal.SIGKILL
        assert journal_path(parent).exists()
    again = subprocess.run([sys.executable, "-m", "vhdfs", "-q", "commit", str(child)],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert flat(parent) == before and not journal_path(parent).exists()


def test_a_child_changed_after_the_crash_is_copied_again_in_full(tmp_path):
    child, parent, _ = interrupted(tmp_path)
    assert read_journal(parent).next_block > 0  # a checkpoint had passed
    fill(child, [(0, b"late" * 1024)])  # written to, against the advice
    after = flat(child)
    result = cli("commit", child)
    assert result.returncode == 0 and "copying all of it again" in result.stderr
    assert flat(parent) == after
