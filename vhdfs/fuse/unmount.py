"""Take a vhdfs mount down and wait until its daemon has finished writing.

`fusermount3 -u` returns as soon as the kernel lets go of the mount point; the daemon then
still flushes the top layer's metadata. `unmount` first asks the daemon to flush (an fsync
through the mount, so a failure is reported while the mount is still there), unmounts, and
waits for the daemon process to exit, so the image is complete when it returns.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import time
from pathlib import Path

from vhdfs.errors import ImageIOError, MountError
from vhdfs.mounttable import FSTYPE, XATTR_PID, XATTR_STATS, XATTR_WRITABLE, mount_entry

EXIT_TIMEOUT = 60.0


def _xattr(path: Path, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def unmount(path: str | os.PathLike[str], *, lazy: bool = False,
            timeout: float = EXIT_TIMEOUT, daemon: int | None = None) -> str:
    """Unmount a vhdfs mount; returns a one-line report. `daemon`: the pid of a writable
    mount's daemon, for a caller that started it (the private mount, which answers no
    extended attributes); otherwise the mount names its daemon itself."""
    mountpoint = Path(os.path.abspath(path))
    entry = mount_entry(mountpoint)
    if entry is None:
        if not mountpoint.exists():
            raise MountError(f"{mountpoint}: no such folder")
        raise MountError(f"{mountpoint}: nothing is mounted there")
    if entry.fstype != FSTYPE:
        raise MountError(f"{mountpoint}: is a {entry.fstype} mount, not a vhdfs one; use umount "
                         f"{mountpoint}")
    pid_text = str(daemon).encode() if daemon is not None else _xattr(mountpoint, XATTR_PID)
    pidfd = None
    if pid_text and pid_text.isdigit():
        try:
            pidfd = os.pidfd_open(int(pid_text))
        except OSError:
            pidfd = None
    if daemon is not None or _xattr(mountpoint, XATTR_WRITABLE) == b"1":
        _flush(mountpoint)
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(mountpoint)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else \
            f"fusermount3 exit status {done.returncode}"
        hint = "; close the programs using it (fuser -vm MOUNTPOINT) or use --lazy" \
            if "busy" in reason.lower() else ""
        raise MountError(f"{mountpoint}: unmount failed: {reason}{hint}")
    if pidfd is None:
        return f"unmounted {mountpoint}"
    try:
        if not _wait_for_exit(pidfd, timeout):
            raise MountError(f"{mountpoint}: unmounted, but its daemon (pid {int(pid_text)}) is "
                             f"still running after {timeout:.0f} s; the image may still be "
                             "written to; do not use it until that process has exited")
    finally:
        os.close(pidfd)
    return f"unmounted {mountpoint}"


def mount_stats(path: str | os.PathLike[str]) -> dict | None:
    """The traffic totals of a vhdfs mount made with --stats (None: without, or not vhdfs).
    Asked for just before unmounting: with nothing open, nothing is read after that."""
    mountpoint = Path(os.path.abspath(path))
    entry = mount_entry(mountpoint)
    if entry is None or entry.fstype != FSTYPE:
        return None
    raw = _xattr(mountpoint, XATTR_STATS)
    try:
        stats = json.loads(raw) if raw else None
    except ValueError:
        return None
    return stats if isinstance(stats, dict) and isinstance(stats.get("summary"), str) else None


def _flush(mountpoint: Path) -> None:
    """fsync through the mount: the daemon writes bitmaps and BAT, or says why it cannot."""
    disk = mountpoint / "disk.raw"
    try:
        fd = os.open(disk, os.O_RDONLY)
    except OSError:
        return  # the daemon still flushes when unmounted
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ENOSYS):
            return
        raise ImageIOError(f"{mountpoint}: flushing the image failed ({os.strerror(exc.errno)}); "
                           "left mounted so nothing is lost; see the mount's log, fix the "
                           "cause (disk space?) and unmount again", exc.errno) from None
    finally:
        os.close(fd)


def _wait_for_exit(pidfd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(remaining * 1000):
            return True
