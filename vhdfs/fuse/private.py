"""A private, short-lived writable mount of a chain, for commands that let a file system's
own tools write into the guest (`vhdfs put`, `rm`, `mkdir`).

It is `vhdfs mount --rw` in a folder nobody else sees: the same daemon
(`fuse.background`), so the same image locks (exclusive on the top layer, shared on its
parents), the same write path and crash ordering (data, bitmap, BAT, footer), and the same
unmount that waits until the daemon has flushed and closed the top layer. No root and no
kernel mount of the guest file system: only this FUSE mount, as any user who may use
/dev/fuse can make.

The command that started it may die (kill -9) while a tool still writes through it. The
daemon watches its parent (a pidfd): once the parent is gone it unmounts whatever a tool
mounted below the private folder (ntfs-3g, exfat-fuse: they then write back and exit),
waits until nothing has a file of the mount open (a running debugfs or mcopy finishes its
file), unmounts, flushes and removes the folder. A tool that has not let go after
ORPHAN_GRACE seconds is cut off: the mount is then taken down lazily and the top layer
flushed all the same, so the image stays a valid VHD whatever the guest file system holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vhdfs.chain import Chain
from vhdfs.errors import MountError
from vhdfs.fuse.background import serve_in_background
from vhdfs.fuse.daemon import MountConfig
from vhdfs.fuse.mountpoint import check_fuse_available
from vhdfs.fuse.tree import DiskFile, build_tree
from vhdfs.fuse.unmount import unmount
from vhdfs.mounttable import mount_entries

log = logging.getLogger("vhdfs")

ORPHAN_GRACE = 120.0  # seconds a tool may go on after the command died before it is cut off
RETRY_INTERVAL = 0.2
DISK_FOLDER = "disk"  # the chain's files: disk.raw, p1, p2, ...
LOG_NAME = "daemon.log"


@dataclass(frozen=True)
class PrivateMount:
    root: Path  # the private folder (mode 0700): the mount, the tools' own mounts, scratch
    mountpoint: Path  # root/disk
    files: list[DiskFile]
    pid: int  # the daemon's

    def file(self, name: str) -> Path:
        return self.mountpoint / name

    def scratch(self, name: str) -> Path:
        """A path in the private folder for a tool's own use (its mount point, a spooled
        standard input)."""
        return self.root / name

    def daemon_log(self) -> str:
        """What the daemon logged (its warnings: a failed write, a failed flush), for an
        error message."""
        try:
            return (self.root / LOG_NAME).read_text(errors="replace").strip()
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """The warnings and errors the daemon logged so far, without their time stamps: a
        request it failed (the chain could not be read or written) is what a tool then
        reports as an I/O error, without the reason."""
        found = []
        for line in self.daemon_log().splitlines():
            for level in (" WARNING: ", " ERROR: "):
                if level in line:
                    found.append(line.split(level, 1)[1].strip())
        return found


def _mounts_below(root: Path) -> list[Path]:
    """Mount points inside `root`, the deepest first."""
    inside = [Path(entry.mountpoint) for entry in mount_entries()
              if Path(entry.mountpoint).is_relative_to(root)]
    return sorted(inside, key=lambda path: len(path.parts), reverse=True)


def _fusermount(*args: str) -> bool:
    try:
        done = subprocess.run(["fusermount3", *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _finish_orphaned(root: Path, mountpoint: Path, parent: int) -> None:
    """In the daemon, once the command that started it is gone (see the module docstring)."""
    log.warning("the command that started this mount (pid %d) is gone; letting its tool "
                "finish, then unmounting %s", parent, mountpoint)
    for inner in _mounts_below(root):
        if inner != mountpoint:  # a tool's own mount: it writes back and exits once unmounted
            _fusermount("-u", "-z", str(inner))
    deadline = time.monotonic() + ORPHAN_GRACE
    while time.monotonic() < deadline:
        if _fusermount("-u", str(mountpoint)):  # refused while a tool has a file open
            return  # the serving loop ends, the daemon flushes and closes the chain
        time.sleep(RETRY_INTERVAL)
    log.warning("%s: a tool still uses the mount after %.0f s; unmounting it lazily",
                mountpoint, ORPHAN_GRACE)
    os.kill(os.getpid(), signal.SIGTERM)  # serve's handler: unmount (lazily), flush


_ORPHANED = threading.Event()  # in the daemon: the command that started it is gone


def _watch_parent(parent: int, root: Path, mountpoint: Path) -> None:
    """Start a thread of the daemon that waits for `parent` to exit."""
    try:
        pidfd = os.pidfd_open(parent)
    except ProcessLookupError:
        pidfd = None  # already gone

    def wait() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
            os.close(pidfd)
        _ORPHANED.set()
        _finish_orphaned(root, mountpoint, parent)

    threading.Thread(target=wait, name="vhdfs-parent-watch", daemon=True).start()


def _remove_if_orphaned(root: Path) -> None:
    """The daemon's last step: nobody else is left to remove the private folder."""
    if _ORPHANED.is_set():
        _remove_folder(root)


def _remove_folder(root: Path) -> None:
    """The private folder, once nothing is mounted in it (never below a live mount)."""
    if _mounts_below(root):
        log.warning("%s: still mounted, left in place", root)
        return
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_mount(chain: Chain, *, prefix: str = "vhdfs-") -> Iterator[PrivateMount]:
    """Mount `chain` writable in a new private folder; yields once the mount answers. The
    chain is handed to the daemon (the caller must not use it any more: the daemon writes
    it); leaving the block unmounts and waits until the daemon has flushed and closed
    the top layer. A failure of the unmount or the final flush is raised (a failure in
    the block is raised as it is, after unmounting)."""
    check_fuse_available()
    root = Path(tempfile.mkdtemp(prefix=prefix)).resolve()  # as the mount table shows it
    mountpoint = root / DISK_FOLDER
    mountpoint.mkdir(mode=0o700)
    files = build_tree(chain, writable=True)
    config = MountConfig(mountpoint, writable=True, page_cache=True)
    parent = os.getpid()
    try:
        pid = serve_in_background(chain, files, config, log_file=root / LOG_NAME,
                                  on_start=lambda: _watch_parent(parent, root, mountpoint),
                                  on_exit=lambda: _remove_if_orphaned(root))
    except BaseException:
        _remove_folder(root)
        raise
    mount = PrivateMount(root, mountpoint, files, pid)
    try:
        yield mount
    except BaseException:
        with contextlib.suppress(MountError, OSError):
            _take_down(mount)
        raise
    _take_down(mount)


def _take_down(mount: PrivateMount) -> None:
    """Unmount the tools' mounts left below the folder, then ours (flush, wait for the
    daemon to exit), then remove the folder."""
    for inner in _mounts_below(mount.root):
        if inner != mount.mountpoint:
            _fusermount("-u", "-z", str(inner))
    try:
        unmount(mount.mountpoint, daemon=mount.pid)
    except MountError as exc:
        said = mount.daemon_log()
        raise MountError(f"{exc}{'; the mount daemon said: ' + said if said else ''}") from None
    _remove_folder(mount.root)
