"""A local file as a source: os.pread / os.pwrite on one descriptor, locked as qemu locks its
images (vhdfs.sources.locks): writable opens hold the file exclusively, read-only ones hold a
shared "no writer" lock (or, with --force-share, nothing that keeps a writer out)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from vhdfs.errors import ImageIOError, RefusedError, VhdfsError
from vhdfs.sources import locks
from vhdfs.sources.base import Source
from vhdfs.sources.locks import Mode


class NotARegularFile(VhdfsError):
    """A path names a FIFO, device, directory or socket where an image file is needed."""

    exit_code = 2


def describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class LocalFile(Source):
    """`lock`: "auto" (writable: EXCLUSIVE; read-only: SHARED, or FORCE_SHARED with
    `force_share`, whose default is the command's --force-share), a `Mode`, or None for no
    lock at all (a glance at a file's ids, never its data)."""

    remote = False

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False,
                 lock: Mode | None | str = "auto", force_share: bool | None = None) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.writable = writable
        self._hold: locks.Hold | None = None
        self.fd = -1  # until opened and locked
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            # O_NONBLOCK: opening a FIFO must never hang; checked to be regular right after.
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise ImageIOError(f"{self.name}: no such file", errno.ENOENT) from None
        except IsADirectoryError:
            raise NotARegularFile(f"{self.name}: is a directory, not an image file") from None
        except PermissionError as exc:
            if writable:
                raise RefusedError(
                    f"{self.name}: cannot open for writing ({os.strerror(exc.errno)}); "
                    "check its permissions or open it read-only") from None
            raise ImageIOError(f"{self.name}: cannot open: {os.strerror(exc.errno)}",
                               exc.errno) from None
        except OSError as exc:
            raise ImageIOError(f"{self.name}: cannot open: {os.strerror(exc.errno)}",
                               exc.errno) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NotARegularFile(f"{self.name}: is {describe_mode(info.st_mode)}, not an image file")
        os.set_blocking(fd, True)
        mode = locks.mode_for(writable, force_share) if lock == "auto" else lock
        if mode is not None:
            try:
                self._hold = locks.lock_fd(fd, self.name, Mode(mode))
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        self._identity = (info.st_dev, info.st_ino)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise ImageIOError.from_os_error(self.name, f"reading {length} bytes", offset, exc) from None
        if len(data) != length:
            # A short read is a truncated file (or one truncated under us): never pad silently.
            raise ImageIOError(
                f"{self.name}: reading {length} bytes at offset {offset} got {len(data)}: "
                "the file is shorter than its metadata says (truncated?)", errno.EIO)
        return data

    def read_into(self, offset: int, view: memoryview) -> None:
        length = len(view)
        try:
            got = os.preadv(self.fd, [view], offset)
        except OSError as exc:
            raise ImageIOError.from_os_error(self.name, f"reading {length} bytes", offset, exc) from None
        if got != length:
            raise ImageIOError(
                f"{self.name}: reading {length} bytes at offset {offset} got {got}: "
                "the file is shorter than its metadata says (truncated?)", errno.EIO)

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as exc:
            raise ImageIOError.from_os_error(self.name, f"writing {len(data)} bytes", offset,
                                             exc) from None

    def sync(self) -> None:
        if self.writable:
            try:
                os.fsync(self.fd)
            except OSError as exc:
                raise ImageIOError.from_os_error(self.name, "fsync", 0, exc) from None

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise ImageIOError.from_os_error(self.name, "truncate", size, exc) from None

    def version_stamp(self) -> tuple[int, float, str]:
        """The file at its path now (a replaced file is another version)."""
        info = os.stat(self.path)
        return info.st_size, info.st_mtime, f"{info.st_size}:{info.st_mtime_ns}"

    def identity(self) -> tuple:
        return ("local",) + self._identity

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges in [start, end) that may hold data, from SEEK_DATA/SEEK_HOLE (holes read as zeros)."""
        ranges: list[tuple[int, int]] = []
        pos = start
        try:
            while pos < end:
                try:
                    data = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break
                    raise
                if data >= end:
                    break
                hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
                ranges.append((data, hole))
                pos = hole
        except OSError:
            return [(start, end)]
        return ranges

    def close(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def identity_of(path: str | os.PathLike[str]) -> tuple | None:
    """What `LocalFile(path).identity()` would be (the file, through any link), or None when
    there is no such file: to ask whether a name is an image already open."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return ("local", info.st_dev, info.st_ino)


def open_local(path: str | os.PathLike[str], *, writable: bool = False,
               force_share: bool | None = None) -> LocalFile:
    return LocalFile(path, writable=writable, force_share=force_share)
