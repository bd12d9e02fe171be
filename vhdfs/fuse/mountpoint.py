"""Checks before mounting, and what the kernel says is mounted where.

Each check names the folder, what was found and what to do, so a failed mount leaves
nothing behind and says why in one line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vhdfs.errors import MountError

FUSE_DEVICE = "/dev/fuse"
FSTYPE = "fuse.vhdfs"  # what our mounts show in the mount table (subtype vhdfs)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_entries() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                entries.append(MountEntry(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return entries


def mount_entry(path: str | os.PathLike[str]) -> MountEntry | None:
    """The mount whose mount point is exactly `path` (the last one, if stacked)."""
    target = os.path.abspath(path)
    found = None
    for entry in mount_entries():
        if entry.mountpoint == target:
            found = entry
    return found


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
