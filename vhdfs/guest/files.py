"""Guest files: directory listings, reading a file's contents, copying files out.

Contents come from TSK's read of the file's default data stream ($DATA on NTFS), in chunks, so a
large file never sits in memory whole.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytsk3

from vhdfs.errors import ImageIOError, RefusedError
from vhdfs.guest.errors import GuestError
from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import (
    META_DIR,
    META_LINK,
    META_REG,
    META_VIRT,
    META_VIRT_DIR,
    Found,
    read_link,
    resolve,
)

CHUNK = 1024 * 1024
log = logging.getLogger("vhdfs")
KIND_NAMES = {META_DIR: "dir", META_VIRT_DIR: "dir", META_REG: "file", META_LINK: "link"}


@dataclass
class Entry:
    name: str
    path: str
    kind: str  # "file", "dir", "link", "other"
    size: int
    mtime: int  # seconds since 1970, UTC
    inode: int
    link_target: str = ""


def entry_of(found: Found, name: str | None = None) -> Entry:
    meta = found.file.info.meta
    kind = KIND_NAMES.get(int(meta.type), "other") if meta is not None else "other"
    entry = Entry(name if name is not None else (found.parts[-1] if found.parts else "/"),
                  found.path, kind, int(meta.size) if meta else 0, int(meta.mtime) if meta else 0,
                  int(meta.addr) if meta else 0)
    if kind == "link":
        entry.link_target = read_link(found.file, found.volume)
    return entry


def list_dir(directory: Found) -> list[Entry]:
    """The entries of a directory, by name; hidden system entries of TSK are left out."""
    volume = directory.volume
    opened = tsk_call(volume.image, f"{volume.describe()}: {directory.path}",
                      directory.file.as_directory)
    entries: dict[str, Entry] = {}
    for item in opened:
        name = item.info.name
        meta = item.info.meta
        if name is None or not int(name.flags) & int(pytsk3.TSK_FS_NAME_FLAG_ALLOC):
            continue
        text = name.name.decode("utf-8", errors="surrogateescape")
        if meta is None:  # the name is there but its metadata (MFT record, inode) is unreadable
            if text not in (".", ".."):
                entries[text] = Entry(text, "/".join((directory.path.rstrip("/"), text)),
                                      "damaged", 0, 0, int(name.meta_addr))
            continue
        # "." and "..", and TSK's virtual entries ($OrphanFiles, FAT's $MBR, $FAT1, $FAT2), are
        # not files of the guest
        if text in (".", "..") or int(meta.type) in (META_VIRT_DIR, META_VIRT):
            continue
        child = Found(volume, item, (*directory.parts, text))
        entries[text] = entry_of(child, text)
    return sorted(entries.values(), key=lambda e: (e.name.casefold(), e.name))


def iter_content(found: Found, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file's bytes, chunk by chunk."""
    volume = found.volume
    if found.is_dir:
        raise GuestError(f"{found.path} on {volume.describe()} is a directory; use vhdfs ls")
    size = int(found.file.info.meta.size)
    offset = 0
    while offset < size:
        want = min(chunk, size - offset)
        data = tsk_call(volume.image, f"{volume.describe()}: reading {found.path} at {offset}",
                        found.file.read_random, offset, want)
        if not data:
            raise GuestError(f"{volume.describe()}: {found.path} ends at byte {offset} although "
                             f"its size is {size}; the file system may be damaged")
        yield data
        offset += len(data)


def read_all(found: Found, limit: int | None = None) -> bytes:
    size = int(found.file.info.meta.size)
    if limit is not None and size > limit:
        raise GuestError(f"{found.path} on {found.volume.describe()} is {size} bytes, more than "
                         f"the {limit} expected here")
    return b"".join(iter_content(found))


def read_text(found: Found, limit: int = 4 * 1024 * 1024) -> str:
    return read_all(found, limit).decode("utf-8", errors="replace")


def copy_out(found: Found, dest: Path, *, force: bool = False,
             skipped: list[str] | None = None) -> list[tuple[str, Path]]:
    """Copy a file (or a directory, recursively) to `dest`; returns (guest path, local path) pairs.

    Each file is written to a temporary name and renamed, so no half-written file is left.
    Entries whose metadata is unreadable are left out, with a warning, and added to `skipped`.
    """
    copied: list[tuple[str, Path]] = []
    if found.is_dir:
        if dest.exists() and not dest.is_dir():
            raise RefusedError(f"{dest}: exists and is not a folder")
        dest.mkdir(parents=True, exist_ok=True)
        for entry in list_dir(found):
            if entry.kind == "damaged":
                log.warning(f"{found.volume.describe()}: {entry.path}: its metadata is "
                            "unreadable (damaged file system); not copied")
                if skipped is not None:
                    skipped.append(entry.path)
            if entry.kind not in ("file", "dir"):
                continue
            child = resolve(found.volume, entry.path, follow_last=False)
            if child is not None:
                copied += copy_out(child, dest / entry.name, force=force, skipped=skipped)
        return copied
    if dest.exists() and not force:
        raise RefusedError(f"{dest}: exists; use --force to replace it")
    tmp = dest.with_name(f".{dest.name}.vhdfs-tmp")
    try:
        with open(tmp, "wb") as out:
            for data in iter_content(found):
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ImageIOError.from_os_error(str(dest), "writing", 0, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    mtime = int(found.file.info.meta.mtime)
    if mtime > 0:
        os.utime(dest, (mtime, mtime))
    copied.append((found.path, dest))
    return copied
