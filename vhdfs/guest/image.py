"""pytsk3 reads a volume through our chain: `VolumeImage` (vhdfs.filesystems.tsk) is a TSK
image of one volume's bytes; `tsk_call` runs a pytsk3 call on it.

TSK calls `read(offset, size)` with offsets inside the volume; we add the volume's start and ask
the chain, so TSK never sees a byte outside the partition and never a local path. A failure of
the chain (a remote read, a truncated file) is kept and re-raised as itself once TSK gives up,
instead of TSK's generic "Cannot determine file system type".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from vhdfs.errors import VhdfsError
from vhdfs.filesystems.tsk import VolumeImage, tsk_message
from vhdfs.guest.errors import FileSystemError

# VolumeImage and tsk_message live in vhdfs.filesystems.tsk, under the guest package: the
# free-space map of convert and upload opens volumes the same way. Named here for the guest
# modules that import them from here.
__all__ = ["FlatDisk", "VolumeImage", "tsk_call", "tsk_message"]

T = TypeVar("T")


class FlatDisk(Protocol):
    name: str
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


def tsk_call(image: VolumeImage, what: str, call: Callable[..., T], *args, **kwargs) -> T:
    """Run a pytsk3 call; chain failures surface as themselves, TSK failures as FileSystemError."""
    image.failure = None
    try:
        return call(*args, **kwargs)
    except (OSError, RuntimeError) as exc:
        if isinstance(image.failure, VhdfsError):
            raise image.failure from None
        if image.failure is not None:
            raise FileSystemError(f"{what}: reading the image failed: {image.failure}") from None
        raise FileSystemError(f"{what}: {tsk_message(exc)}") from None
