"""Small durable file operations: write-then-rename, unlink, read-only checks.

Each step that changes stored state passes through `Faults.point`, so crash tests can stop
between any two of them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from vhdfs.errors import ImageIOError, RefusedError
from vhdfs.maintain.faults import Faults
from vhdfs.sources.modes import give_new_file_mode


def sync_folder(folder: Path, faults: Faults) -> None:
    faults.point(f"sync folder {folder.name}")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, faults: Faults, *, sync_folder_after: bool = True) -> None:
    """Replace `path` with `data`: a crash leaves the old contents or the new, never a mix.
    Without `sync_folder_after` the new name may not survive a power loss (the old file
    then stays): for updates where the old contents are still correct, only older."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        faults.point(f"write {tmp.name}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            give_new_file_mode(tmp, path)  # a replaced record keeps its mode
            faults.point(f"sync {tmp.name}")
            os.fsync(handle.fileno())
        faults.point(f"rename {tmp.name}")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ImageIOError(f"{path}: cannot write: {os.strerror(exc.errno or errno.EIO)}",
                           exc.errno) from None
    if sync_folder_after:
        sync_folder(path.parent, faults)


def remove_durably(path: Path, faults: Faults) -> None:
    faults.point(f"unlink {path.name}")
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot delete: {os.strerror(exc.errno or errno.EIO)}",
                           exc.errno) from None
    sync_folder(path.parent, faults)


def read_only_reason(path: Path) -> str | None:
    """Why `path` must not be written, or None. Root ignores permission bits, so they are
    read here as the owner's statement that the file is not to be changed."""
    try:
        info = path.stat()
        fs = os.statvfs(path)
    except OSError as exc:
        return f"cannot inspect it ({os.strerror(exc.errno or errno.EIO)})"
    if fs.f_flag & os.ST_RDONLY:
        return "it is on a read-only file system"
    if not info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return f"it is read-only (mode {stat.filemode(info.st_mode)})"
    if not os.access(path, os.W_OK):
        return "this user may not write it"
    return None


def require_writable(path: Path, role: str, why: str) -> None:
    reason = read_only_reason(path)
    if reason is not None:
        raise RefusedError(f"{path}: {role} cannot be written: {reason}; {why}")


def require_folder_writable(folder: Path, why: str) -> None:
    try:
        fs = os.statvfs(folder)
    except OSError as exc:
        raise RefusedError(f"{folder}: cannot inspect the folder ({os.strerror(exc.errno)})") from None
    if fs.f_flag & os.ST_RDONLY or not os.access(folder, os.W_OK):
        raise RefusedError(f"{folder}: the folder is read-only; {why}")
