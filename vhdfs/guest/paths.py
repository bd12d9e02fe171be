"""Guest paths: parse what the user typed, find it on a volume, expand profile globs.

`C:\\inetpub\\wwwroot\\Welcome.png`, `/inetpub/wwwroot/Welcome.png` and `inetpub/WWWROOT/welcome.png`
name the same file: `\\` and `/` both separate, a drive letter is dropped (which volume Windows
calls C: is a matter of its registry, not of the disk; the volume is found by the path), and names
match without regard to case on NTFS and FAT (TSK's own name comparison for those file systems).
Symbolic links inside the volume are followed (Debian's /lib is a link to usr/lib).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pytsk3

from vhdfs.guest.errors import AmbiguousPath, FileSystemError, GuestPathNotFound
from vhdfs.guest.image import tsk_call, tsk_message
from vhdfs.guest.volumes import DiskVolumes, Volume
from vhdfs.quoting import escape

MAX_SYMLINKS = 40
META_DIR = int(pytsk3.TSK_FS_META_TYPE_DIR)
META_LINK = int(pytsk3.TSK_FS_META_TYPE_LNK)
META_REG = int(pytsk3.TSK_FS_META_TYPE_REG)
META_VIRT = int(pytsk3.TSK_FS_META_TYPE_VIRT)
META_ALLOC = int(pytsk3.TSK_FS_META_FLAG_ALLOC)
META_VIRT_DIR = int(pytsk3.TSK_FS_META_TYPE_VIRT_DIR)
NAME_ALLOC = int(pytsk3.TSK_FS_NAME_FLAG_ALLOC)


@dataclass(frozen=True)
class GuestPath:
    text: str  # as typed
    parts: tuple[str, ...]  # components, root first
    drive: str = ""  # "C" for C:\..., else ""

    @property
    def posix(self) -> str:
        return "/" + "/".join(self.parts)


def parse_guest_path(text: str) -> GuestPath:
    raw = text.replace("\\", "/")
    drive = ""
    if len(raw) >= 2 and raw[1] == ":" and raw[0].isascii() and raw[0].isalpha():
        drive, raw = raw[0].upper(), raw[2:]
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return GuestPath(text, tuple(parts), drive)


@dataclass
class Found:
    """A path resolved on a volume: the TSK file object and the names as stored."""

    volume: Volume
    file: pytsk3.File
    parts: tuple[str, ...]

    @property
    def path(self) -> str:
        return "/" + "/".join(self.parts)

    @property
    def meta_type(self) -> int:
        meta = self.file.info.meta
        return int(meta.type) if meta is not None else 0

    @property
    def is_dir(self) -> bool:
        return self.meta_type in (META_DIR, META_VIRT_DIR)


def is_text(name: str) -> bool:
    """Whether a name (decoded with surrogateescape) was valid UTF-8 on the disk."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open_by_listing(volume: Volume, parts: list[str]) -> pytsk3.File | None:
    """`_open` for a path with a name that is not UTF-8 (ext allows any bytes but "/" and
    NUL): TSK opens paths given as UTF-8 text only, so the directories from the last name
    TSK can open down are listed and their entries matched byte for byte."""
    known = 0
    while known < len(parts) and is_text(parts[known]):
        known += 1
    current = _open(volume, parts[:known]) if known else \
        tsk_call(volume.image, f"{volume.describe()}: root directory", volume.require_fs().open, "/")
    for index in range(known, len(parts)):
        meta = current.info.meta if current is not None else None
        if meta is None or int(meta.type) not in (META_DIR, META_VIRT_DIR):
            return None
        wanted = parts[index].encode("utf-8", "surrogateescape")
        where = "/" + "/".join(parts[:index])
        listing = tsk_call(volume.image, f"{volume.describe()}: {where}", current.as_directory)
        current = next((entry for entry in listing if entry.info.name is not None
                        and entry.info.name.name == wanted
                        and int(entry.info.name.flags) & NAME_ALLOC), None)
    return current


def _open(volume: Volume, parts: list[str]) -> pytsk3.File | None:
    """The file at `parts`, None when it does not exist; a damaged entry is an error."""
    fs = volume.require_fs()
    path = "/" + "/".join(parts)
    if not is_text(path):
        return _open_by_listing(volume, parts)
    volume.image.failure = None
    try:
        return fs.open(path)
    except (OSError, RuntimeError) as exc:
        if volume.image.failure is not None:  # the chain failed, not the lookup
            tsk_call(volume.image, f"{volume.describe()}: {path}", fs.open, path)
        message = tsk_message(exc)
        if "path not found" in message:
            return None
        raise FileSystemError(f"{volume.describe()}: {path}: {message}") from None


def read_link(file: pytsk3.File, volume: Volume) -> str:
    """The target of a symbolic link (TSK keeps short, in-inode targets in meta.link)."""
    meta = file.info.meta
    target = bytes(meta.link or b"")
    if not target:
        target = tsk_call(volume.image, f"{volume.describe()}: symbolic link", file.read_random,
                          0, int(meta.size))
    return target.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def resolve(volume: Volume, path: GuestPath | str, *, follow_last: bool = True) -> Found | None:
    """The file or directory `path` names on `volume`, or None when it does not exist."""
    if isinstance(path, str):
        path = parse_guest_path(path)
    pending = list(path.parts)
    done: list[str] = []
    hops = 0
    fs = volume.require_fs()
    current = tsk_call(volume.image, f"{volume.describe()}: root directory", fs.open, "/")
    while pending:
        name = pending.pop(0)
        if name == "..":
            if done:
                done.pop()
            current = _open(volume, done) if done else fs.open("/")
            continue
        found = _open(volume, [*done, name])
        if found is None or found.info.meta is None or not int(found.info.meta.flags) & META_ALLOC:
            return None  # absent, or a stale directory entry naming a freed record
        stored = found.info.name.name.decode("utf-8", errors="surrogateescape") \
            if found.info.name is not None else name
        if int(found.info.meta.type) == META_LINK and (pending or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise FileSystemError(f"{volume.describe()}: too many symbolic links under "
                                      f"{path.posix}")
            target = read_link(found, volume)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(stored)
        current = found
    return Found(volume, current, tuple(done))


def _shown(path: GuestPath) -> str:
    """A path as the user typed it, for messages (raw bytes and control characters escaped)."""
    return escape(path.text, backslash=False)


def locate(volumes: DiskVolumes, path: GuestPath, volume_number: int | None) -> Found:
    """Find `path` on the volume asked, or on the single volume that has it."""
    if volume_number is not None:
        volume = volumes.get(volume_number)
        volume.require_fs()
        found = resolve(volume, path)
        if found is None:
            raise GuestPathNotFound(f"{_shown(path)}: not found on {volume.describe()}")
        return found
    hits = []
    for volume in volumes.with_fs():
        found = resolve(volume, path)
        if found is not None:
            hits.append(found)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        searched = ", ".join(v.describe() for v in volumes.with_fs()) or "no readable volume"
        raise GuestPathNotFound(f"{_shown(path)}: not found on any volume (searched {searched})")
    if not path.parts:
        raise AmbiguousPath(f"the disk has {len(hits)} volumes with a file system "
                            f"({', '.join(str(h.volume.number) for h in hits)}; see vhdfs "
                            "volumes); choose one with --volume N")
    where = ", ".join(h.volume.describe() for h in hits)
    raise AmbiguousPath(f"{_shown(path)} exists on {where}; choose one with --volume N")


def glob(volume: Volume, pattern: str) -> list[Found]:
    """Paths on `volume` matching `pattern` (`*`, `?`, `[...]` within one component)."""
    parts = parse_guest_path(pattern).parts
    root = resolve(volume, "/")
    results: list[Found] = []
    if root is None:
        return results

    def walk(base: Found, index: int) -> None:
        if index == len(parts):
            results.append(base)
            return
        part = parts[index]
        if not any(ch in part for ch in "*?["):
            found = resolve(volume, GuestPath(pattern, (*base.parts, part)))
            if found is not None:
                walk(found, index + 1)
            return
        if not base.is_dir:
            return
        for name in sorted(child_names(base)):
            candidate, wanted = (name.casefold(), part.casefold()) if volume.case_insensitive \
                else (name, part)
            if fnmatch.fnmatchcase(candidate, wanted):
                found = resolve(volume, GuestPath(pattern, (*base.parts, name)))
                if found is not None:
                    walk(found, index + 1)

    walk(root, 0)
    return results


def child_names(directory: Found) -> list[str]:
    """Names in a directory (allocated entries only, without . and ..)."""
    volume = directory.volume
    fs = volume.require_fs()
    opened = tsk_call(volume.image, f"{volume.describe()}: {directory.path}", fs.open_dir,
                      directory.path)
    names = []
    seen = set()
    for entry in opened:
        name = entry.info.name
        if name is None or not int(name.flags) & int(pytsk3.TSK_FS_NAME_FLAG_ALLOC):
            continue
        text = name.name.decode("utf-8", errors="surrogateescape")
        if text in (".", "..") or text in seen:
            continue
        seen.add(text)
        names.append(text)
    return names
