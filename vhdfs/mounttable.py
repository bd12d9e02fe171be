"""What the kernel says is mounted where, and what a vhdfs mount says about itself.

The mount table (/proc/self/mountinfo) and the extended attributes a vhdfs mount answers on
its root folder (its daemon's pid, its image, whether it is writable). The FUSE view mounts
and unmounts with these; any command that reads a file can ask whether the file lives in a
vhdfs mount, and whether that mount is writable. No FUSE library here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

FSTYPE = "fuse.vhdfs"  # what our mounts show in the mount table (subtype vhdfs)

XATTR_PID = b"user.vhdfs.pid"
XATTR_IMAGE = b"user.vhdfs.image"
XATTR_WRITABLE = b"user.vhdfs.writable"
XATTR_STATS = b"user.vhdfs.stats"  # `mount --stats`: the daemon's traffic totals, as JSON


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


@dataclass(frozen=True)
class VhdfsMount:
    mountpoint: str
    writable: bool
    pid: str  # the daemon's pid, as it says ("" when it does not answer)
    image: str  # the top layer it shows (secrets scrubbed by the daemon)


def _xattr(path: str, name: bytes) -> str:
    try:
        return os.fsdecode(os.getxattr(path, name))
    except OSError:
        return ""


def vhdfs_mount_of(path: str | os.PathLike[str]) -> VhdfsMount | None:
    """The vhdfs mount that holds `path` (a file shown by it), or None."""
    target = os.path.dirname(os.path.realpath(path))
    holder = None
    for entry in mount_entries():  # the deepest mount point above the file wins
        point = entry.mountpoint
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (holder is None or len(point) >= len(holder.mountpoint)):
            holder = entry
    if holder is None or holder.fstype != FSTYPE:
        return None
    point = holder.mountpoint
    # A mount that does not say it is read-only is taken as writable: the safe side.
    return VhdfsMount(point, _xattr(point, XATTR_WRITABLE) != "0", _xattr(point, XATTR_PID),
                      _xattr(point, XATTR_IMAGE))
