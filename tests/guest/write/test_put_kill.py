"""put killed with SIGKILL part way, and put run by a user who is not root.

A killed put cannot clean up after itself: its mount daemon notices that its parent is gone,
lets the tool finish (or ntfs-3g write back), unmounts, flushes and removes the private
folder. Afterwards nothing is mounted, no tool runs, the child opens and checks clean, the
parent's bytes are unchanged, and each file in the guest is whole or absent (an NTFS file
cut mid-copy is the temporary `.vhdfs-put-PID.tmp` next to where it was going)."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guest.write.conftest import (
    check_base,
    child_of,
    ext_fsck,
    ext_names,
    ntfs_read,
    partition_file,
)
from tests.tooling import force_unmount
from vhdfs.mounttable import mount_entries

TIMEOUT = 60.0


def start_paused(args: list[str], flag: Path, tmpdir: Path, at: str = "between"
                 ) -> subprocess.Popen:
    """`vhdfs ARGS` that stops at its first pause point `at` (VHDFS_TEST_WRITE_PAUSE)."""
    tmpdir.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "vhdfs", *args, "--progress", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "VHDFS_TEST_WRITE_PAUSE": str(flag),
             "VHDFS_TEST_WRITE_PAUSE_AT": at, "TMPDIR": str(tmpdir)})
    deadline = time.monotonic() + TIMEOUT
    while not Path(f"{flag}.reached").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "put never reached its pause point"
        time.sleep(0.02)
    return process


def mounts_in(folder: Path) -> list[str]:
    return [e.mountpoint for e in mount_entries() if Path(e.mountpoint).is_relative_to(folder)]


def wait_until_cleaned_up(tmpdir: Path) -> None:
    """The daemon of the killed command unmounts everything and removes its folder."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while mounts_in(tmpdir) or any(tmpdir.iterdir()):
            assert time.monotonic() < deadline, (mounts_in(tmpdir), list(tmpdir.iterdir()))
            time.sleep(0.1)
    finally:
        for mountpoint in sorted(mounts_in(tmpdir), reverse=True):
            force_unmount(Path(mountpoint))


def vhdfs_check(image: Path) -> int:
    return subprocess.run([sys.executable, "-m", "vhdfs", "check", str(image)],
                          capture_output=True).returncode


def test_kill_9_in_the_middle_of_an_ntfs_file(windows_base, tmp_path, vhdfs):
    child = child_of(windows_base, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "1-first.txt").write_bytes(b"first\n")
    (site / "2-big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # 3 chunks: paused in it
    tmpdir, flag = tmp_path / "tmp", tmp_path / "flag"
    process = start_paused(["put", str(child), str(site), "C:\\inetpub"], flag, tmpdir,
                           "in-file")
    assert mounts_in(tmpdir)  # the private mount and ntfs-3g's, below it
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_until_cleaned_up(tmpdir)
    assert not subprocess.run(["pgrep", "-f", f"ntfs-3g.*{tmpdir}"]).returncode == 0
    assert vhdfs_check(child) == 0
    check_base(windows_base)
    names = vhdfs("ls", child, "/inetpub/site").out.split()
    assert set(names) == {"1-first.txt", f".vhdfs-put-{process.pid}.tmp"}
    volume = partition_file(child, 2, tmp_path / "p2.ntfs")
    assert ntfs_read(volume, "/inetpub/site/1-first.txt") == b"first\n"


def test_kill_9_between_two_ext4_changes(two_base, tmp_path, vhdfs):
    child = child_of(two_base, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.txt").write_bytes(b"a\n")
    (site / "b.txt").write_bytes(b"b\n")
    tmpdir, flag = tmp_path / "tmp", tmp_path / "flag"
    process = start_paused(["put", str(child), str(site), "/srv"], flag, tmpdir)
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_until_cleaned_up(tmpdir)
    assert vhdfs_check(child) == 0
    check_base(two_base)
    volume = partition_file(child, 2, tmp_path / "p2.ext4")
    assert ext_names(volume, "/srv/site") == [".", ".."]  # paused after the first change
    ext_fsck(volume)


def test_put_finishes_normally_after_its_pause(two_base, tmp_path):
    """The pause hook itself changes nothing: released, the put completes."""
    child = child_of(two_base, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.txt").write_bytes(b"a\n")
    tmpdir, flag = tmp_path / "tmp", tmp_path / "flag"
    process = start_paused(["put", str(child), str(site), "/srv"], flag, tmpdir)
    Path(f"{flag}.go").write_text("")
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert not mounts_in(tmpdir) and not list(tmpdir.iterdir())


# ---------------------------------------------------------------------------- not root
def _nobody_cannot_use_fuse() -> str | None:
    """Why a put as user `nobody` cannot run here, or None."""
    if os.geteuid() != 0:
        return "the tests do not run as root, so they cannot switch to user nobody"
    if not os.path.exists("/usr/bin/setpriv"):
        return "setpriv (util-linux) is missing"
    info = os.stat("/dev/fuse") if os.path.exists("/dev/fuse") else None
    if info is None:
        return "/dev/fuse is missing"
    probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "--", "sh", "-c", "exec 3<>/dev/fuse"], capture_output=True,
                           text=True)
    if probe.returncode:
        owner = pwd.getpwuid(info.st_uid).pw_name
        return (f"user nobody cannot open /dev/fuse ({stat.filemode(info.st_mode)} {owner}: "
                f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'denied'})"
                "; a put without root needs a /dev/fuse its user may open (mode 0666, as "
                "Debian's fuse3 installs it)")
    return None


def test_put_as_a_user_who_is_not_root(two_base, windows_base, tmp_path):
    reason = _nobody_cannot_use_fuse()
    if reason:
        pytest.skip(reason)
    nobody = pwd.getpwnam("nobody")
    work = tmp_path / "nobody"
    work.mkdir()
    ext_child = child_of(two_base, work, "ext.vhd")
    ntfs_child = child_of(windows_base, work, "ntfs.vhd")
    source = work / "hello.txt"
    source.write_bytes(b"hello from nobody\n")
    for path in (work, *work.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
                 sys.executable, "-m", "vhdfs"]
    env = {**os.environ, "TMPDIR": str(work), "HOME": str(work)}
    for child, guest in ((ext_child, "/srv/hello.txt"), (ntfs_child, "C:\\hello.txt")):
        done = subprocess.run([*as_nobody, "put", str(child), str(source), guest, "--volume",
                               "2"], capture_output=True, text=True, env=env, cwd=work)
        assert done.returncode == 0, done.stderr
    volume = partition_file(ext_child, 2, tmp_path / "p2.ext4")
    assert "User:     0   Group:     0" in subprocess.run(
        ["debugfs", "-R", "stat /srv/hello.txt", str(volume)], capture_output=True,
        text=True).stdout  # root's, whoever ran put
    ntfs = partition_file(ntfs_child, 2, tmp_path / "p2.ntfs")
    assert ntfs_read(ntfs, "/hello.txt") == b"hello from nobody\n"
    check_base(two_base)
    check_base(windows_base)
