"""Guest files: directory listings and reading a file's contents (copying out: copyout.py).

Contents come from TSK's read of the file's default data stream ($DATA on NTFS), in chunks, so a
large file never sits in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytsk3

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
)

CHUNK = 1024 * 1024
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


def listing(directory: Found) -> list[tuple[Entry, Found | None]]:
    """The entries of a directory by name, each with its Found (None for a damaged entry,
    whose metadata cannot be read); hidden system entries of TSK are left out."""
    volume = directory.volume
    opened = tsk_call(volume.image, f"{volume.describe()}: {directory.path}",
                      directory.file.as_directory)
    entries: dict[str, tuple[Entry, Found | None]] = {}
    for item in opened:
        name = item.info.name
        meta = item.info.meta
        if name is None or not int(name.flags) & int(pytsk3.TSK_FS_NAME_FLAG_ALLOC):
            continue
        text = name.name.decode("utf-8", errors="surrogateescape")
        if meta is None:  # the name is there but its metadata (MFT record, inode) is unreadable
            if text not in (".", ".."):
                entries[text] = (Entry(text, "/".join((directory.path.rstrip("/"), text)),
                                       "damaged", 0, 0, int(name.meta_addr)), None)
            continue
        # "." and "..", and TSK's virtual entries ($OrphanFiles, FAT's $MBR, $FAT1, $FAT2), are
        # not files of the guest
        if text in (".", "..") or int(meta.type) in (META_VIRT_DIR, META_VIRT):
            continue
        child = Found(volume, item, (*directory.parts, text))
        entries[text] = (entry_of(child, text), child)
    return sorted(entries.values(), key=lambda pair: (pair[0].name.casefold(), pair[0].name))


def list_dir(directory: Found) -> list[Entry]:
    """The entries of a directory, by name; hidden system entries of TSK are left out."""
    return [entry for entry, _ in listing(directory)]


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
