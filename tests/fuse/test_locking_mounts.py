"""Image locks with real mounts: the data-loss cases of issue 11 one by one, the mount
daemon keeping its locks after the command returns (they survive the fork), kill -9 of a
daemon, qemu-img against a writable mount, and the warning before writing into a layer that
has children."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fuse.conftest import KiB, MiB, add_child, flat_reference, make_chain, vhdfs
from tests.tooling import force_unmount, need
from vhdfs.resolve import open_chain
from vhdfs.sources import holders


def _flat(path: Path) -> bytes:
    with open_chain(str(path)) as chain:
        return chain.read(0, chain.size)


class Detached:
    """`vhdfs mount ...` as a user runs it: the command returns, the daemon serves."""

    def __init__(self, image: Path, mountpoint: Path, *args: str) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        done = vhdfs("mount", image, mountpoint, *args)
        assert done.returncode == 0, done.stderr
        self.said = done.stdout + done.stderr
        self.pid = int(re.search(r"daemon pid (\d+)", done.stdout).group(1))

    def write(self, offset: int, data: bytes, *, sync: bool) -> None:
        fd = os.open(self.mountpoint / "disk.raw", os.O_WRONLY)
        try:
            assert os.pwrite(fd, data, offset) == len(data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def umount(self) -> None:
        vhdfs("umount", self.mountpoint)

    def cleanup(self) -> None:
        force_unmount(self.mountpoint)


@pytest.fixture
def detached(tmp_path):
    started: list[Detached] = []

    def start(image: Path, *args: str, name: str = "mnt") -> Detached:
        handle = Detached(image, tmp_path / f"{name}{len(started)}", *args)
        started.append(handle)
        return handle

    yield start
    for handle in reversed(started):
        handle.cleanup()


def one_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("vhdfs: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def refused_by_mount(done: subprocess.CompletedProcess, mount: Detached) -> None:
    assert done.returncode == 9, done.stdout + done.stderr
    text = one_error(done)
    assert f"(pid {mount.pid}, mounted at {mount.mountpoint})" in text, text
    assert f"unmount it first: vhdfs umount {mount.mountpoint}" in text, text


# ------------------------------------------------------------------ the cases of issue 11
def test_commit_while_the_parent_is_mounted_rw_is_refused_and_nothing_is_lost(tmp_path, detached):
    """It used to exit 0 and truncate away blocks the daemon had allocated but not yet
    recorded: after the unmount both the mount's writes and the committed data were gone."""
    base, parent, child = make_chain(tmp_path / "chain", 3)
    expected = bytearray(_flat(parent))
    child_before = _flat(child)
    mount = detached(parent, "--rw")
    for offset, sync in ((3 * MiB + 512, True), (7 * MiB, False)):  # new blocks, one unsynced
        data = os.urandom(200 * KiB)
        mount.write(offset, data, sync=sync)
        expected[offset:offset + len(data)] = data
    refused_by_mount(vhdfs("commit", child, check=False), mount)
    refused_by_mount(vhdfs("commit", child, "--delete-child", check=False), mount)
    mount.umount()
    assert _flat(parent) == bytes(expected)
    assert child.exists()
    assert vhdfs("check", parent, check=False).returncode == 0
    # The child is no longer valid over the written parent; committing it is what the user
    # wanted, and now it runs.
    assert vhdfs("commit", child, check=False).returncode == 0
    assert _flat(parent) == _flat(child) != child_before


def test_commit_delete_child_while_the_child_is_mounted_rw_is_refused(tmp_path, detached):
    """It used to report success, unlink the child, and lose every later write through the
    mount, fsynced ones too."""
    child = make_chain(tmp_path / "chain", 2)[-1]
    expected = bytearray(_flat(child))
    mount = detached(child, "--rw")
    refused_by_mount(vhdfs("commit", child, "--delete-child", check=False), mount)
    refused_by_mount(vhdfs("commit", child, check=False), mount)
    for offset in (MiB, 5 * MiB + 4096):
        data = os.urandom(64 * KiB)
        mount.write(offset, data, sync=True)
        expected[offset:offset + len(data)] = data
    mount.umount()
    assert child.exists() and _flat(child) == bytes(expected)


def test_set_parent_while_the_child_is_mounted_rw_is_refused(tmp_path, detached):
    """The daemon's next flush used to zero the new W2ru locator; check called it clean."""
    base, child = make_chain(tmp_path / "chain", 2)
    moved = tmp_path / "chain" / "moved-base.vhd"
    os.link(base, moved)
    expected = bytearray(_flat(child))
    mount = detached(child, "--rw")
    refused_by_mount(vhdfs("set-parent", child, moved, check=False), mount)
    repair = vhdfs("check", "--repair", child, check=False)
    assert repair.returncode == 9 and f"vhdfs umount {mount.mountpoint}" in repair.stdout
    data = os.urandom(128 * KiB)
    mount.write(2 * MiB, data, sync=True)
    expected[2 * MiB:2 * MiB + len(data)] = data
    mount.umount()
    report = json.loads(vhdfs("check", child, "--json", check=False).stdout)
    assert report["status"] == "clean", report
    done = vhdfs("set-parent", child, moved)  # now it may
    assert "moved-base.vhd" in done.stdout
    assert _flat(child) == bytes(expected)
    assert json.loads(vhdfs("check", child, "--json", check=False).stdout)["status"] == "clean"


def test_a_sibling_chain_that_is_open_keeps_a_commit_out(tmp_path, detached):
    base, parent, child = make_chain(tmp_path / "chain", 3)
    sibling = add_child(parent, tmp_path / "chain" / "sibling.vhd")
    reading = detached(sibling)  # read-only: shares the parent with other readers
    done = vhdfs("commit", child, check=False)
    assert done.returncode == 9
    text = one_error(done)
    assert f"(pid {reading.pid}, mounted at {reading.mountpoint}) is reading it; writing needs " \
        f"it alone; unmount it first: vhdfs umount {reading.mountpoint}" in text
    assert vhdfs("info", child, check=False).returncode == 0  # readers share
    reading.umount()
    assert vhdfs("commit", child, check=False).returncode == 0


# ------------------------------------------------------------------ fork and kill -9
def test_the_daemon_holds_the_locks_after_the_mount_command_has_returned(tmp_path, detached):
    """The command locks, forks, exits; the locks live on in the daemon's open files, and
    the records name the daemon (and its mount point), not the command that is gone."""
    base, child = make_chain(tmp_path / "chain", 2)
    mount = detached(child, "--rw")  # the command has returned: only the daemon is left
    assert Path(f"/proc/{mount.pid}").exists()
    refused_by_mount(vhdfs("info", child, check=False), mount)
    (tmp_path / "other").mkdir()
    refused_by_mount(vhdfs("mount", "--rw", base, tmp_path / "other", check=False), mount)
    records = [json.loads(path.read_text()) for folder in holders.record_dirs()
               if folder.is_dir() for path in folder.glob("*.json")
               if json.loads(path.read_text()).get("path") in (str(child), str(base))]
    assert {r["pid"] for r in records} == {mount.pid}
    assert {(Path(r["path"]).name, r["mode"]) for r in records} == {
        ("child1.vhd", "exclusive"), ("base.vhd", "shared")}
    assert all(r["mountpoint"] == str(mount.mountpoint) for r in records)
    mount.umount()
    assert vhdfs("info", child, check=False).returncode == 0  # released with the unmount
    assert vhdfs("set-parent", child, base, check=False).returncode == 0


def test_kill_9_of_a_mount_daemon_releases_its_locks_at_once(tmp_path, detached):
    child = make_chain(tmp_path / "chain", 2)[-1]
    mount = detached(child, "--rw")
    refused_by_mount(vhdfs("commit", child, check=False), mount)
    os.kill(mount.pid, signal.SIGKILL)
    _wait_dead(mount.pid)
    done = vhdfs("commit", child, check=False)  # right after, the dead mount still there
    assert done.returncode == 0, done.stderr
    again = detached(child, "--rw")  # and a new writer
    assert again.pid != mount.pid


def _wait_dead(pid: int) -> None:
    """Until the process has exited (a zombie has closed its files: its locks are gone)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not die")


# ------------------------------------------------------------------ qemu
def test_qemu_img_refuses_a_child_mounted_rw(tmp_path, detached):
    need("qemu-img")
    base, child = make_chain(tmp_path / "chain", 2)
    mount = detached(child, "--rw")
    done = subprocess.run(["qemu-img", "info", str(child)], capture_output=True, text=True)
    assert done.returncode != 0
    assert 'Failed to get shared "write" lock' in done.stderr
    done = subprocess.run(["qemu-img", "info", "-U", str(child)], capture_output=True, text=True)
    assert done.returncode == 0 and "file format: vpc" in done.stdout
    # The parent is only read: qemu may read it, and its own writer is kept out.
    assert subprocess.run(["qemu-img", "info", str(base)], capture_output=True).returncode == 0
    done = subprocess.run(["qemu-io", "-f", "vpc", "-c", "write 0 512", str(base)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "lock" in done.stderr
    mount.umount()


# ------------------------------------------------------------------ --force-share
def test_a_read_only_mount_with_force_share_reads_a_chain_being_written(tmp_path, detached):
    child = make_chain(tmp_path / "chain", 2)[-1]
    before = _flat(child)
    writer = detached(child, "--rw")
    (tmp_path / "refused").mkdir()
    refused_by_mount(vhdfs("mount", child, tmp_path / "refused", check=False), writer)
    reader = detached(child, "--force-share", name="reader")
    warnings = [line for line in reader.said.splitlines() if line.startswith("vhdfs: warning:")]
    assert len(warnings) == 1 and f"(pid {writer.pid}, mounted at {writer.mountpoint}) is " \
        "writing it; --force-share reads it anyway: what is read may be inconsistent" in \
        warnings[0]
    assert (reader.mountpoint / "disk.raw").read_bytes() == before


# ------------------------------------------------------------------ writing into a parent
def test_mount_rw_of_a_layer_with_children_names_them_before_the_first_write(tmp_path, detached):
    base, parent, child = make_chain(tmp_path / "chain", 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    far = add_child(parent, elsewhere / "far.vhd")
    before = flat_reference(far, tmp_path / "far.raw")
    mount = detached(parent, "--rw", "--search", str(elsewhere))
    warnings = [line for line in mount.said.splitlines() if line.startswith("vhdfs: warning:")]
    assert len(warnings) == 1, mount.said
    assert f"{parent} has children that become invalid once it is written" in warnings[0]
    assert str(child) in warnings[0] and str(far) in warnings[0]
    assert f"vhdfs create --parent {parent} NEW.vhd" in warnings[0]
    mount.umount()
    assert flat_reference(far, tmp_path / "far2.raw") == before  # nothing was written
    quiet = [detached(child, "--rw"), detached(parent)]  # no children / read-only: no warning
    assert all("warning" not in handle.said for handle in quiet)
