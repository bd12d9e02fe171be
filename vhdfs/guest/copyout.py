"""Copy a guest file or directory out to the host: all of it, or nothing (`vhdfs get`).

1. The guest tree is walked first. Entries whose metadata is unreadable (a damaged file
   system) are left out with a warning, and listed in `skipped`; links and special files
   of the guest are not copied.
2. Every target on the host is checked before anything is written. Something in the way
   (a file, or a symbolic link, dangling or not, where a file or folder goes) is refused
   without `force` and replaced with it; a link is never followed, it is replaced itself.
   A folder is never replaced by a file.
3. Everything is written into a staging folder next to DEST (the same file system), each
   file synced. A failure here (reading the guest, a full disk) removes the staging
   folder, and the error says that nothing was written.
4. The staged copy is put in place by renames: one rename when DEST does not exist; into an
   existing folder DEST, each new file or folder is renamed into it. Only a failure of one
   of these renames can leave part of the copy in place, and its error says how much.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vhdfs.errors import ImageIOError, RefusedError, UsageError, VhdfsError
from vhdfs.guest.files import iter_content, listing
from vhdfs.guest.paths import Found
from vhdfs.quoting import escape
from vhdfs.sources.modes import give_new_file_mode

log = logging.getLogger("vhdfs")


@dataclass
class _Item:
    found: Found
    rel: tuple[str, ...]  # names below DEST; () is DEST itself
    is_dir: bool


def _shown(path: Path) -> str:
    return escape(str(path), backslash=False)


def _is_folder(path: Path) -> bool:
    """A real folder: not a link to one (a link is never followed)."""
    return path.is_dir() and not path.is_symlink()


def _walk(found: Found, skipped: list[str]) -> list[_Item]:
    """The file and folder to copy, each folder before its contents."""
    items = [_Item(found, (), found.is_dir)]
    pending = [items[0]] if found.is_dir else []
    while pending:
        folder = pending.pop()
        for entry, child in listing(folder.found):
            if child is None:
                log.warning("%s: %s: its metadata is unreadable (damaged file system); not "
                            "copied", folder.found.volume.describe(), entry.path)
                skipped.append(entry.path)
                continue
            if entry.kind not in ("file", "dir"):
                continue
            item = _Item(child, (*folder.rel, entry.name), entry.kind == "dir")
            items.append(item)
            if item.is_dir:
                pending.append(item)
    return items


def _in_the_way(items: list[_Item], dest: Path) -> list[Path]:
    """Targets that exist and are not a folder a folder can merge into. Refuses outright
    what even `force` does not replace: a folder where a file goes."""
    found: list[Path] = []
    replaced: list[tuple[str, ...]] = []
    for item in items:
        if any(item.rel[:len(r)] == r for r in replaced):
            continue  # below a link or file that is replaced by a fresh folder
        target = dest.joinpath(*item.rel)
        if not os.path.lexists(target):
            continue
        if _is_folder(target):
            if item.is_dir:
                continue  # merged into
            raise RefusedError(f"{_shown(target)}: is a folder, and {item.found.path} is a "
                               "file; choose another DEST")
        found.append(target)
        replaced.append(item.rel)
    return found


def _write(items: list[_Item], root: Path, dest: Path) -> list[tuple[str, Path]]:
    """The whole copy under `root` (staging); returns (guest path, staged path) of files.
    Each file gets the umask's mode, or that of the file it replaces in `dest`."""
    written: list[tuple[str, Path]] = []
    for item in items:
        path = root.joinpath(*item.rel)
        if item.is_dir:
            path.mkdir()
            continue
        with open(path, "xb") as out:
            for data in iter_content(item.found):
                out.write(data)
            out.flush()
            give_new_file_mode(path, dest.joinpath(*item.rel))
            os.fsync(out.fileno())
        meta = item.found.file.info.meta
        mtime = int(meta.mtime) if meta is not None else 0
        if mtime > 0:
            os.utime(path, (mtime, mtime))
        written.append((item.found.path, path))
    return written


def _remove(path: Path) -> None:
    """A file or link (never followed), or a folder this module staged."""
    if _is_folder(path):
        shutil.rmtree(path)
    else:
        path.unlink()


def _put_in_place(items: list[_Item], root: Path, dest: Path) -> None:
    """Rename the staged copy into place; what was in the way was agreed to be replaced."""
    if not os.path.lexists(dest) or not (items[0].is_dir and _is_folder(dest)):
        if os.path.lexists(dest):
            if items[0].is_dir:
                dest.unlink()  # a file or link where the folder goes
            os.replace(root, dest)  # a file replaces a file or a link itself
        else:
            os.rename(root, dest)
        return
    done: list[tuple[str, ...]] = []
    moved = 0
    try:
        for item in items[1:]:
            if any(item.rel[:len(d)] == d for d in done):
                continue  # moved with its folder
            target, staged = dest.joinpath(*item.rel), root.joinpath(*item.rel)
            if item.is_dir and _is_folder(target):
                continue  # merge into the folder that is there
            if os.path.lexists(target):
                _remove(target)
            os.rename(staged, target)
            done.append(item.rel)
            moved += 1
    except OSError as exc:
        raise ImageIOError(f"{_shown(dest)}: putting the copied files in place failed after "
                           f"{moved} of them: {os.strerror(exc.errno or 0) or exc}; what is in "
                           "place is complete, the rest was not copied", exc.errno) from None


def copy_out(found: Found, dest: Path, *, force: bool = False,
             skipped: list[str] | None = None) -> list[tuple[str, Path]]:
    """Copy a file (or a directory, recursively) to `dest`, all or nothing (see the module
    docstring); returns (guest path, local path) pairs of the files copied."""
    skipped = skipped if skipped is not None else []
    folder = dest.parent
    if not folder.is_dir():
        raise UsageError(f"{_shown(dest)}: folder {_shown(folder)} does not exist")
    items = _walk(found, skipped)
    in_the_way = _in_the_way(items, dest)
    if in_the_way and not force:
        more = f" (and {len(in_the_way) - 1} more)" if len(in_the_way) > 1 else ""
        link = " (a link: it is replaced, never followed)" if in_the_way[0].is_symlink() else ""
        raise RefusedError(f"{_shown(in_the_way[0])}: exists{link}{more}; use --force to "
                           "replace it; nothing was copied")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".vhdfs-get-", suffix=".partial", dir=folder))
    except OSError as exc:
        raise ImageIOError.from_os_error(str(folder), "creating a staging folder in", 0, exc) \
            from None
    root = staging / "copy"
    try:
        try:
            written = _write(items, root, dest)
        except OSError as exc:
            raise ImageIOError(f"{_shown(dest)}: writing the copy failed: "
                               f"{os.strerror(exc.errno) if exc.errno else exc}; nothing was "
                               "written", exc.errno) from None
        except VhdfsError as exc:
            exc.message = f"{exc.message}; nothing was written to {_shown(dest)}"
            raise
        _put_in_place(items, root, dest)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    with contextlib.suppress(OSError):  # the renames are durable once the folder is synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return [(guest, dest.joinpath(*path.relative_to(root).parts)) for guest, path in written]
