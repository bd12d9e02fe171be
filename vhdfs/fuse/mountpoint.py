"""Checks before mounting (what is mounted where: vhdfs.mounttable).

Each check names the folder, what was found and what to do, so a failed mount leaves
nothing behind and says why in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from vhdfs.errors import MountError
from vhdfs.mounttable import FSTYPE, mount_entry

FUSE_DEVICE = "/dev/fuse"


def check_fuse_available() -> None:
    if not os.path.exists(FUSE_DEVICE):
        raise MountError(f"{FUSE_DEVICE} does not exist: FUSE is not available here; load the "
                         "fuse kernel module (modprobe fuse) or, in a container, pass the device "
                         "in (--device /dev/fuse)")
    try:
        os.close(os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise MountError(f"{FUSE_DEVICE}: cannot open it ({os.strerror(exc.errno)}); mount as "
                         "a user who may use FUSE (group fuse, or root)") from None


def check_mountpoint(path: str | os.PathLike[str]) -> Path:
    """The absolute mount point, once it is an existing, empty folder that is not a mount."""
    mountpoint = Path(os.path.abspath(path))
    if not mountpoint.exists():
        if mountpoint.is_symlink():
            raise MountError(f"{mountpoint}: mount point is a dangling symbolic link")
        raise MountError(f"{mountpoint}: mount point does not exist; create it first (mkdir -p "
                         f"{mountpoint})")
    if not mountpoint.is_dir():
        raise MountError(f"{mountpoint}: mount point is not a folder")
    entry = mount_entry(mountpoint)
    if entry is not None or os.path.ismount(mountpoint):
        what = f" ({entry.fstype} from {entry.source})" if entry else ""
        fix = f"vhdfs umount {mountpoint}" if entry and entry.fstype == FSTYPE else f"umount {mountpoint}"
        raise MountError(f"{mountpoint}: already a mount point{what}; unmount it first ({fix}) "
                         "or choose another folder")
    try:
        names = os.listdir(mountpoint)
    except OSError as exc:
        raise MountError(f"{mountpoint}: cannot list the mount point "
                         f"({os.strerror(exc.errno)})") from None
    if names:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise MountError(f"{mountpoint}: mount point is not empty ({len(names)} entries: {shown}); "
                         "mount on an empty folder so nothing is hidden")
    if not os.access(mountpoint, os.W_OK | os.X_OK):
        raise MountError(f"{mountpoint}: no write permission on the mount point")
    return mountpoint
