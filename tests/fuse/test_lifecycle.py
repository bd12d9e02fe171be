"""Starting and ending mounts: background start, umount, signals, and clear refusals."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fuse.conftest import flat_reference, make_chain, vhdfs
from tests.tooling import force_unmount
from vhdfs.errors import MountError
from vhdfs.fuse import mountpoint as mountpoint_module
from vhdfs.fuse.mountpoint import check_fuse_available
from vhdfs.mounttable import mount_entry
from vhdfs.resolve import open_chain


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def background(tmp_path):
    """Mount points of background mounts, unmounted (and daemons killed) after the test."""
    points: list[Path] = []
    yield points
    for point in points:
        pid = None
        if os.path.ismount(point):
            try:
                pid = int(os.getxattr(point, "user.vhdfs.pid"))
            except OSError:
                pass
        force_unmount(point)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vhdfs: error: "), done.stderr
    return lines[0]


def test_background_mount_answers_when_the_command_returns(tmp_path, background):
    top = make_chain(tmp_path / "chain", 3)[-1]
    flat = flat_reference(top, tmp_path / "flat.raw")
    point = tmp_path / "mnt"
    point.mkdir()
    background.append(point)
    done = vhdfs("mount", top, point)
    assert "mounted" in done.stdout and done.stderr == ""
    # No waiting: the command returned only once reads were answered.
    assert (point / "disk.raw").read_bytes() == flat
    entry = mount_entry(point)
    assert entry is not None and entry.fstype == "fuse.vhdfs"
    pid = int(os.getxattr(point, "user.vhdfs.pid"))
    assert pid != os.getpid() and _alive(pid)
    assert vhdfs("umount", point).stdout.strip() == f"unmounted {point}"
    assert not os.path.ismount(point)
    assert not _alive(pid), "umount returns only after the daemon has finished"


def test_umount_returns_once_the_image_is_complete(tmp_path, background):
    top = make_chain(tmp_path / "chain", 2)[-1]
    point = tmp_path / "mnt"
    point.mkdir()
    background.append(point)
    vhdfs("mount", top, point, "--rw")
    payload = os.urandom(300 * 1024)
    fd = os.open(point / "disk.raw", os.O_WRONLY)
    try:
        assert os.pwrite(fd, payload, 1_000_000) == len(payload)  # no fsync: umount's job
    finally:
        os.close(fd)
    vhdfs("umount", point)
    with open_chain(str(top)) as chain:  # read straight from the file, right away
        assert chain.read(1_000_000, len(payload)) == payload


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_unmount_cleanly_and_keep_the_writes(tmp_path, mount, signum):
    top = make_chain(tmp_path / "chain", 2)[-1]
    mounted = mount(top, "--rw")
    payload = os.urandom(64 * 1024 + 100)
    fd = os.open(mounted.file(), os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 77)
    finally:
        os.close(fd)
    assert mounted.stop(signum) == 0, mounted.stderr
    assert not os.path.ismount(mounted.mountpoint)
    assert "unmounted" in mounted.out_path.read_text()
    with open_chain(str(top)) as chain:
        assert chain.read(77, len(payload)) == payload


def test_mount_refusals_leave_nothing_mounted(tmp_path, mount):
    chain = make_chain(tmp_path / "chain", 2)
    top = chain[-1]
    missing = tmp_path / "missing"
    done = vhdfs("mount", top, missing, check=False)
    assert done.returncode == MountError.exit_code
    assert "does not exist" in _one_error_line(done)

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    done = vhdfs("mount", top, full, check=False)
    assert done.returncode == MountError.exit_code
    assert "not empty" in _one_error_line(done) and not os.path.ismount(full)

    busy = mount(top).mountpoint
    done = vhdfs("mount", top, busy, check=False)
    assert done.returncode == MountError.exit_code
    assert "already a mount point" in _one_error_line(done)

    empty = tmp_path / "empty"
    empty.mkdir()
    chain[0].rename(tmp_path / "moved-away.vhd")  # the base is gone: a broken chain
    done = vhdfs("mount", top, empty, check=False)
    assert done.returncode == 4
    assert "not found" in _one_error_line(done)
    assert not os.path.ismount(empty) and os.listdir(empty) == []


def test_missing_fuse_device_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mountpoint_module, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    with pytest.raises(MountError, match="does not exist: FUSE is not available"):
        check_fuse_available()


def test_umount_refusals(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 1)[-1]
    plain = tmp_path / "plain"
    plain.mkdir()
    done = vhdfs("umount", plain, check=False)
    assert done.returncode == MountError.exit_code
    assert "nothing is mounted" in _one_error_line(done)

    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        done = vhdfs("umount", other, check=False)
        assert done.returncode == MountError.exit_code
        assert "not a vhdfs one" in _one_error_line(done) and os.path.ismount(other)
    finally:
        subprocess.run(["umount", str(other)], check=True)

    mounted = mount(top, "--allow-other")
    with open(mounted.file(), "rb"):
        done = vhdfs("umount", mounted.mountpoint, check=False)
        assert done.returncode == MountError.exit_code
        assert "busy" in _one_error_line(done)
        assert os.path.ismount(mounted.mountpoint)
    vhdfs("umount", mounted.mountpoint)
    assert not os.path.ismount(mounted.mountpoint)
    assert mounted.proc.wait(30) == 0


def test_allow_other_reaches_the_mount_options(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 1)[-1]
    mounted = mount(top, "--allow-other")
    options = next(line for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1] == str(mounted.mountpoint)).split()[3]
    assert "allow_other" in options.split(",") and "ro" in options.split(",")


def test_one_writer_per_image_and_raw_images_read_only(tmp_path, mount):
    top = make_chain(tmp_path / "chain", 2)[-1]
    writer = mount(top, "--rw")
    second = tmp_path / "second"
    second.mkdir()
    done = vhdfs("mount", top, second, "--rw", check=False)
    assert done.returncode == 9  # in use
    assert f"is writing it; unmount it first: vhdfs umount {writer.mountpoint}" in \
        _one_error_line(done)
    assert not os.path.ismount(second)
    assert writer.stop() == 0

    raw = tmp_path / "flat.raw"
    flat = flat_reference(top, raw)
    done = vhdfs("mount", raw, second, "--rw", check=False)
    assert done.returncode == 2 and "is not a VHD or VHDX (a raw image?)" in _one_error_line(done)
    assert mount(raw).file().read_bytes() == flat  # read-only, a raw image mounts as it is
