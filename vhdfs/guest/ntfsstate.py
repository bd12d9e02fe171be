"""Was a Windows volume shut down cleanly? The NTFS dirty flag and the hibernation file.

- `$Volume` (MFT record 3) carries a `$VOLUME_INFORMATION` attribute whose flags say
  "dirty" (0x0001) when Windows found a problem or did not finish with the volume: chkdsk
  runs at the next boot, which on Azure delays or breaks the first start.
- `hiberfil.sys` at the root of the Windows volume starts with a signature: `hibr` (or
  `HIBR`) while it holds a hibernated system (the machine was hibernated, or Fast Startup's
  hybrid shutdown left the kernel session there), `wake` after that image was resumed, and
  zeros when nothing was saved. A hibernated image on an uploaded disk makes the VM resume
  a session of another machine, or throw it away.
"""

from __future__ import annotations

from dataclasses import dataclass

from vhdfs.filesystems.ntfs import (
    HIBERNATED,
    NTFS_ATTR_VOLUME_INFORMATION,
    NTFS_VOLUME_INODE,
    RESUMED,
    VOLUME_INFORMATION,
    VOLUME_IS_DIRTY,
)
from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import resolve
from vhdfs.guest.volumes import Volume


@dataclass(frozen=True)
class NtfsVolumeState:
    version: str  # "3.1"
    flags: int

    @property
    def dirty(self) -> bool:
        return bool(self.flags & VOLUME_IS_DIRTY)


def ntfs_volume_state(volume: Volume) -> NtfsVolumeState | None:
    """The flags of an NTFS volume's $VOLUME_INFORMATION; None when it cannot be read."""
    fs = volume.require_fs()
    record = tsk_call(volume.image, f"{volume.describe()}: $Volume", fs.open_meta,
                      inode=NTFS_VOLUME_INODE)
    for attr in record:
        if int(attr.info.type) != NTFS_ATTR_VOLUME_INFORMATION:
            continue
        raw = tsk_call(volume.image, f"{volume.describe()}: $Volume $VOLUME_INFORMATION",
                       record.read_random, 0, int(attr.info.size), attr.info.type, attr.info.id)
        if len(raw) < VOLUME_INFORMATION.sizeof():
            return None
        info = VOLUME_INFORMATION.parse(raw)
        return NtfsVolumeState(f"{info.major_version}.{info.minor_version}", info.flags)
    return None


@dataclass(frozen=True)
class HiberFile:
    path: str
    size: int
    signature: bytes  # the first four bytes

    @property
    def hibernated(self) -> bool:
        return self.signature in HIBERNATED

    def describe(self) -> str:
        if self.hibernated:
            return f"{self.path} holds a hibernated system (signature {self.signature.decode()!r})"
        if self.signature in RESUMED:
            return f"{self.path} holds an image that was resumed (signature 'wake'), none pending"
        if self.signature == bytes(4):
            return f"{self.path} holds no hibernated image"
        return f"{self.path} starts with {self.signature!r}, not a signature vhdfs knows"


def hiberfile(volume: Volume) -> HiberFile | None:
    """The volume's hiberfil.sys and its signature, None when there is none."""
    found = resolve(volume, "hiberfil.sys")
    if found is None or found.is_dir:
        return None
    size = int(found.file.info.meta.size)
    head = tsk_call(volume.image, f"{volume.describe()}: {found.path}", found.file.read_random,
                    0, 4) if size else b""
    return HiberFile(found.path, size, bytes(head[:4]).ljust(4, b"\0"))

