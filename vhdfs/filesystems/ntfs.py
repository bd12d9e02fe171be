"""What an NTFS volume says about its own state, read through TSK: the flags of $Volume's
$VOLUME_INFORMATION ("dirty": Windows did not finish with the volume, chkdsk runs at the next
boot) and the signature at the start of hiberfil.sys (`hibr`: a hibernated system, or Fast
Startup's hybrid shutdown, holds the volume's state in memory). The guest checks
(vhdfs.guest.ntfsstate) report them; the free-space map keeps such a volume whole, since its
$Bitmap may not be what Windows will act on.
"""

from __future__ import annotations

import pytsk3
from construct import Bytes, Int8ul, Int16ul, Struct

NTFS_VOLUME_INODE = 3
NTFS_ATTR_VOLUME_INFORMATION = 0x70
VOLUME_IS_DIRTY = 0x0001

VOLUME_INFORMATION = Struct(
    "reserved" / Bytes(8),
    "major_version" / Int8ul,
    "minor_version" / Int8ul,
    "flags" / Int16ul,
)

HIBERNATED = (b"hibr", b"HIBR")
RESUMED = (b"wake", b"WAKE")
HIBERFILE = "/hiberfil.sys"
HIBERNATED_REASON = ("Windows is hibernated on it (hiberfil.sys holds a session: Fast Startup "
                     "or hibernation)")


def volume_flags(fs: pytsk3.FS_Info) -> int | None:
    """The $VOLUME_INFORMATION flags, None when they cannot be read. TSK errors propagate
    (OSError, RuntimeError)."""
    record = fs.open_meta(inode=NTFS_VOLUME_INODE)
    for attr in record:
        if int(attr.info.type) != NTFS_ATTR_VOLUME_INFORMATION:
            continue
        raw = record.read_random(0, int(attr.info.size), attr.info.type, attr.info.id)
        if len(raw) < VOLUME_INFORMATION.sizeof():
            return None
        return int(VOLUME_INFORMATION.parse(raw).flags)
    return None


def hibernation_signature(fs: pytsk3.FS_Info) -> bytes | None:
    """The first four bytes of the volume's hiberfil.sys, None when there is none."""
    try:
        found = fs.open(HIBERFILE)
    except (OSError, RuntimeError):
        return None
    if found.info.meta is None or int(found.info.meta.size) == 0:
        return None
    return bytes(found.read_random(0, 4))[:4]


def why_not_clean(fs: pytsk3.FS_Info) -> str:
    """Why the volume's allocation may not be what Windows acts on ("" when clean)."""
    flags = volume_flags(fs)
    if flags is not None and flags & VOLUME_IS_DIRTY:
        return "NTFS marked dirty ($Volume; chkdsk has not run since)"
    if hibernation_signature(fs) in HIBERNATED:
        return HIBERNATED_REASON
    return ""
