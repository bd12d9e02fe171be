"""pytsk3 reads a volume through our chain: `VolumeImage` is a TSK image of one volume's bytes.

TSK calls `read(offset, size)` with offsets inside the volume; we add the volume's start and ask
the chain, so TSK never sees a byte outside the partition and never a local path. A failure of
the chain (a remote read, a truncated file) is kept and re-raised as itself once TSK gives up,
instead of TSK's generic "Cannot determine file system type".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, TypeVar

import pytsk3

from vhdfs.errors import VhdfsError
from vhdfs.guest.errors import FileSystemError

T = TypeVar("T")


class FlatDisk(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class VolumeImage(pytsk3.Img_Info):
    def __init__(self, disk: FlatDisk, start: int, length: int) -> None:
        self._disk = disk
        self._start = start
        self._length = max(0, min(length, disk.size - start))
        self.failure: BaseException | None = None
        super().__init__(url="", type=pytsk3.TSK_IMG_TYPE_EXTERNAL)

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset >= self._length or size <= 0:
            return b""
        try:
            return self._disk.read(self._start + offset, min(size, self._length - offset))
        except BaseException as exc:  # TSK turns it into a RuntimeError; keep the real one
            self.failure = exc
            raise

    def read_bytes(self, offset: int, size: int) -> bytes:
        """Bytes of the volume for our own use (boot sector fields), zero-padded at its end."""
        data = self.read(offset, size)
        return data + bytes(size - len(data))

    def get_size(self) -> int:
        return self._length

    def close(self) -> None:  # the chain belongs to the caller
        pass


_TSK_LOCATION = re.compile(r"^\w+: \([\w.]+:\d+\) ")


def tsk_message(exc: BaseException) -> str:
    """TSK's error text on one line, without the C++ source locations."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = _TSK_LOCATION.sub("", text)
    return re.sub(r"\s*\(- \w+\)$", "", text).strip() or type(exc).__name__


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
