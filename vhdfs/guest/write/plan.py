"""What a guest write will do, decided before anything is written.

A request (`put SRC GUESTPATH`, `rm GUESTPATH`, `mkdir GUESTPATH`) becomes a list of single
changes (make a folder, write one file, remove one file or folder) on one volume, with every
path spelled as the guest file system stores it: paths are read as `cat` reads them (drive
letters, `\\`, any case on NTFS and FAT: vhdfs.guest.paths), and each existing component is
replaced by its name on disk, so that a case-sensitive tool (ntfs-3g, mtools' exact matches)
changes the file the user meant instead of creating a second one next to it.

Every refusal happens here, through the chain, while nothing is mounted: a missing parent
folder, something in the way without --force, a folder without -r, the volume root, a name
the file system cannot hold. So a refused command has written nothing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.errors import RefusedError, UsageError
from vhdfs.guest.errors import AmbiguousPath, GuestPathNotFound
from vhdfs.guest.files import listing
from vhdfs.guest.paths import Found, GuestPath, locate, parse_guest_path, resolve
from vhdfs.guest.volumes import DiskVolumes, Volume
from vhdfs.guest.write.errors import NotWritable
from vhdfs.quoting import escape

#: the file systems vhdfs writes, and the tool it drives for each (see vhdfs.guest.write.run)
WRITABLE = {"NTFS": "ntfs-3g", "FAT12": "mtools", "FAT16": "mtools", "FAT32": "mtools",
            "ext2": "debugfs", "ext3": "debugfs", "ext4": "debugfs"}
WHY_NOT = {
    "exFAT": "exfat-fuse mounts block devices only (it asks the kernel for a fuseblk "
             "mount, which a regular file cannot back without a root-made loop device) and "
             "exfatprogs has no tool that writes files",
}
WINDOWS_FORBIDDEN = set('"*:<>?|') | {chr(c) for c in range(32)}
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
MAX_NAME = 255
EXT_SUPERBLOCK = 1024
EXT_INCOMPAT_RECOVER = 0x0004  # s_feature_incompat: the journal holds unreplayed changes


@dataclass(frozen=True)
class Target:
    """The volume written: what the writers need once the chain belongs to the mount."""

    number: int
    fs_type: str
    description: str  # 'volume 2 (NTFS "Windows")'
    file: str  # its file in a vhdfs mount: p2, or disk.raw for a disk without partitions
    case_insensitive: bool

    @property
    def tool(self) -> str:
        return WRITABLE[self.fs_type]


@dataclass(frozen=True)
class Existing:
    """The guest file a write replaces: what the new file keeps of it (ext: owner, mode)."""

    mode: int
    uid: int
    gid: int
    size: int


@dataclass(frozen=True)
class MakeDir:
    path: tuple[str, ...]


@dataclass(frozen=True)
class WriteFile:
    path: tuple[str, ...]
    source: Path  # a local regular file (standard input is spooled to one first)
    size: int
    replaces: Existing | None = None


@dataclass(frozen=True)
class Remove:
    path: tuple[str, ...]
    is_dir: bool
    size: int = 0


Change = MakeDir | WriteFile | Remove


def shown(path: tuple[str, ...]) -> str:
    """A guest path for messages (escaped as ls -b does)."""
    return escape("/" + "/".join(path), backslash=False)


@dataclass
class Plan:
    target: Target
    path: tuple[str, ...]  # the guest path the request names, as stored (new parts as typed)
    changes: list[Change] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(c.size for c in self.changes if isinstance(c, WriteFile))


def _checked(plan: Plan) -> Plan:
    """Every path the tool will be given, existing names included, is one it takes
    literally: mtools reads `[...]` as a pattern (it could match another file), and a
    debugfs command cannot hold a line break."""
    for change in plan.changes:
        for name in change.path:
            if plan.target.tool == "mtools" and ("[" in name or "]" in name):
                raise UsageError(f"{shown(change.path)}: mtools reads [ and ] in a name as a "
                                 "pattern, which could match another file; vhdfs does not "
                                 "hand it such names (rename it from Windows)")
            if plan.target.tool == "debugfs" and "\n" in name:
                raise UsageError(f"{shown(change.path)}: a name with a line break cannot be "
                                 "given to debugfs")
    return plan


# ---------------------------------------------------------------------------- volumes
def target_of(volume: Volume) -> Target:
    """The volume as a write target, or NotWritable with the reason."""
    volume.require_fs()
    if volume.fs_type not in WRITABLE:
        why = WHY_NOT.get(volume.fs_type, "no tool vhdfs trusts writes it")
        raise NotWritable(f"{volume.describe()}: vhdfs cannot write {volume.fs_type}: {why} "
                          "(it writes NTFS, FAT and ext2/3/4)")
    if volume.fs_type.startswith("ext"):
        _require_clean_journal(volume)
    return Target(volume.number, volume.fs_type, volume.describe(),
                  "disk.raw" if volume.partition is None else f"p{volume.number}",
                  volume.case_insensitive)


def _require_clean_journal(volume: Volume) -> None:
    """debugfs writes past the journal: over a journal still to be replayed, the guest's
    next mount would replay old blocks over the new ones."""
    incompat = int.from_bytes(volume.image.read_bytes(EXT_SUPERBLOCK + 0x60, 4), "little")
    if incompat & EXT_INCOMPAT_RECOVER:
        raise NotWritable(f"{volume.describe()}: its journal holds changes not yet written "
                          "(the guest did not shut down cleanly); writing now would lose them: "
                          "boot the guest and shut it down, or run e2fsck on the volume first")


def _walk(volume: Volume, parts: tuple[str, ...]) -> tuple[Found, int]:
    """The deepest existing entry on the way to `parts` and how many components it covers,
    walking from the root (TSK is never asked for a name below a file)."""
    found = resolve(volume, GuestPath("", ()))
    if found is None:
        raise GuestPathNotFound(f"{volume.describe()}: its root folder cannot be read")
    for count in range(1, len(parts) + 1):
        if not found.is_dir:
            return found, count - 1
        deeper = resolve(volume, GuestPath("", parts[:count]))
        if deeper is None:
            return found, count - 1
        found = deeper
    return found, len(parts)


def _depth(volume: Volume, parts: tuple[str, ...]) -> int:
    """How many leading components of `parts` exist on `volume`."""
    return _walk(volume, parts)[1]


def choose_volume(volumes: DiskVolumes, path: GuestPath, number: int | None) -> Volume:
    """The volume a write goes to: --volume N; else the one where most of the path exists
    (all of it, or its deepest folder); a tie is AmbiguousPath."""
    if number is not None:
        volume = volumes.get(number)
        volume.require_fs()
        return volume
    candidates = volumes.with_fs()
    if not candidates:
        raise GuestPathNotFound("the disk has no volume with a file system vhdfs can read; "
                                "see vhdfs volumes")
    if len(candidates) == 1:
        return candidates[0]
    depths = [(_depth(volume, path.parts), volume) for volume in candidates]
    best = max(depth for depth, _ in depths)
    winners = [volume for depth, volume in depths if depth == best]
    if len(winners) == 1:
        return winners[0]
    where = ", ".join(v.describe() for v in winners)
    raise AmbiguousPath(f"{escape(path.text, backslash=False)}: could go to {where}; choose "
                        "one with --volume N (see vhdfs volumes)")


# ---------------------------------------------------------------------------- names
def check_new_name(target: Target, name: str) -> None:
    """A name vhdfs is about to create: one the file system (and Windows, on NTFS and FAT)
    can hold, and one its tool can be given."""
    what = f"{escape(name, backslash=False)!s}"
    raw = name.encode("utf-8", "surrogateescape")
    if not target.fs_type.startswith("ext"):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{what}: not valid UTF-8; {target.fs_type} names are Unicode") \
                from None
        bad = sorted({ch for ch in name if ch in WINDOWS_FORBIDDEN})
        if bad:
            shown_bad = " ".join(escape(ch, backslash=False) for ch in bad)
            raise UsageError(f"{what}: Windows does not allow {shown_bad} in a name on "
                             f"{target.fs_type}; choose another name")
        if name.rstrip(". ") != name:
            raise UsageError(f"{what}: Windows drops a trailing dot or space from a name; "
                             "choose another name")
        if name.split(".", 1)[0].upper() in WINDOWS_RESERVED:
            raise UsageError(f"{what}: a device name on Windows; choose another name")
        if len(name.encode("utf-16-le")) // 2 > MAX_NAME:
            raise UsageError(f"{what}: longer than {MAX_NAME} characters")
        return
    if len(raw) > MAX_NAME:
        raise UsageError(f"{what}: longer than {MAX_NAME} bytes, the most ext allows")


def _existing(found: Found) -> Existing:
    meta = found.file.info.meta
    return Existing(int(meta.mode) & 0o7777, int(meta.uid), int(meta.gid), int(meta.size))


def _child(volume: Volume, parent: Found, name: str) -> Found | None:
    """`name` in the folder `parent` (any case where the file system ignores case)."""
    return resolve(volume, GuestPath(name, (*parent.parts, name)))


@dataclass
class _Destination:
    volume: Volume
    target: Target
    folder: Found  # the deepest existing folder on the way
    rest: tuple[str, ...]  # the components below it, as typed (empty: the path exists)
    found: Found | None  # the path itself when it exists


def _destination(volumes: DiskVolumes, text: str, number: int | None) -> _Destination:
    path = parse_guest_path(text)
    volume = choose_volume(volumes, path, number)
    target = target_of(volume)
    found, count = _walk(volume, path.parts)
    if count == len(path.parts):
        folder = found if found.is_dir else resolve(volume, GuestPath(text, found.parts[:-1]))
        assert folder is not None  # the file's own folder was walked through
        return _Destination(volume, target, folder, (), found)
    if not found.is_dir:
        raise GuestPathNotFound(f"{shown(found.parts)} on {volume.describe()} is a file, "
                                f"not a folder; {escape(text, backslash=False)} cannot be "
                                "below it")
    return _Destination(volume, target, found, path.parts[count:], None)


def _missing_folder(dest: _Destination, fix: str) -> GuestPathNotFound:
    missing = (*dest.folder.parts, dest.rest[0])
    return GuestPathNotFound(f"{shown(missing)}: no such folder on {dest.target.description}; "
                             f"{fix}")


# ---------------------------------------------------------------------------- put
@dataclass(frozen=True)
class LocalItem:
    rel: tuple[str, ...]  # below SRC; () is SRC itself
    path: Path
    is_dir: bool
    size: int


def local_items(src: Path) -> list[LocalItem]:
    """SRC and, for a folder, everything below it (folders before their contents), as
    `cp -r` copies them; anything but regular files and folders is refused up front."""
    def item(path: Path, rel: tuple[str, ...]) -> LocalItem:
        try:
            info = os.lstat(path)
        except OSError as exc:
            raise UsageError(f"{escape(str(path), backslash=False)}: "
                             f"{os.strerror(exc.errno or 0)}") from None
        if stat.S_ISLNK(info.st_mode):
            raise UsageError(f"{escape(str(path), backslash=False)}: a symbolic link; put "
                             "copies files and folders (copy what it points to instead)")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise UsageError(f"{escape(str(path), backslash=False)}: not a regular file or "
                             "folder")
        if not os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(info.st_mode) else 0)):
            raise UsageError(f"{escape(str(path), backslash=False)}: permission denied")
        return LocalItem(rel, path, stat.S_ISDIR(info.st_mode), 0 if stat.S_ISDIR(
            info.st_mode) else info.st_size)

    first = item(src, ())
    items = [first]
    pending = [first] if first.is_dir else []
    while pending:
        folder = pending.pop(0)
        for name in sorted(os.listdir(folder.path)):
            child = item(folder.path / name, (*folder.rel, name))
            items.append(child)
            if child.is_dir:
                pending.append(child)
    return items


def _check_unique(target: Target, items: list[LocalItem], src: Path) -> None:
    """Two entries of one SRC folder that are one name on a case-insensitive file system."""
    if not target.case_insensitive:
        return
    seen: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
    for entry in items[1:]:
        key = (entry.rel[:-1], entry.rel[-1].casefold())
        if key in seen:
            one, other = (src.joinpath(*r) for r in (seen[key], entry.rel))
            raise UsageError(f"{escape(str(one), backslash=False)} and "
                             f"{escape(str(other), backslash=False)} are one name on "
                             f"{target.fs_type}, which ignores case; rename one of them")
        seen[key] = entry.rel


def plan_put(volumes: DiskVolumes, src: Path, name_hint: str | None, text: str,
             number: int | None, *, force: bool) -> Plan:
    """`put SRC GUESTPATH` as `cp -r SRC GUESTPATH` would do it: into GUESTPATH when that is
    an existing folder (SRC keeps its name, `name_hint`; None for standard input, which
    then needs a file name), else as GUESTPATH, whose folder must exist. Files in the way
    are replaced only with `force`; a folder merges into an existing folder."""
    items = local_items(src)
    dest = _destination(volumes, text, number)
    target = dest.target
    top, root = _put_root(dest, text, name_hint)
    _check_unique(target, items, src)
    plan = Plan(target, root)
    in_the_way = _put_changes(plan, dest.volume, items, top)
    if in_the_way and not force:
        more = f" (and {len(in_the_way) - 1} more)" if len(in_the_way) > 1 else ""
        raise RefusedError(f"{shown(in_the_way[0])} exists on {target.description}{more}; "
                           "use --force to replace it; nothing was written")
    return _checked(plan)


def _put_root(dest: _Destination, text: str, name_hint: str | None
              ) -> tuple[Found | None, tuple[str, ...]]:
    """What SRC becomes on the guest: what is there now (None: nothing) and its path."""
    target = dest.target
    if dest.found is not None and dest.found.is_dir:
        if name_hint is None:
            raise UsageError(f"{shown(dest.found.parts)} is a folder on {target.description}; "
                             "name the file to write standard input to (GUESTPATH/NAME)")
        check_new_name(target, name_hint)
        top = _child(dest.volume, dest.found, name_hint)
        return top, top.parts if top is not None else (*dest.found.parts, name_hint)
    if dest.found is not None:
        if text.endswith(("/", "\\")):
            raise GuestPathNotFound(f"{shown(dest.found.parts)} on {target.description} is a "
                                    "file, not a folder")
        return dest.found, dest.found.parts
    if text.endswith(("/", "\\")) or len(dest.rest) > 1:
        raise _missing_folder(dest, "create it first: vhdfs mkdir -p IMAGE FOLDER")
    check_new_name(target, dest.rest[0])
    return None, (*dest.folder.parts, dest.rest[0])


def _put_changes(plan: Plan, volume: Volume, items: list[LocalItem], top: Found | None
                 ) -> list[tuple[str, ...]]:
    """A folder made or a file written per local item, into `plan`; the guest paths of the
    files in the way."""
    target = plan.target
    found_at: dict[tuple[str, ...], Found | None] = {(): top}
    where_at: dict[tuple[str, ...], tuple[str, ...]] = {(): plan.path}
    in_the_way: list[tuple[str, ...]] = []
    for entry in items:
        if entry.rel:
            name, parent = entry.rel[-1], entry.rel[:-1]
            check_new_name(target, name)
            inside = found_at[parent]
            found_at[entry.rel] = _child(volume, inside, name) if inside is not None else None
            here = found_at[entry.rel]
            where_at[entry.rel] = here.parts if here is not None else (*where_at[parent], name)
        found, where = found_at[entry.rel], where_at[entry.rel]
        local = escape(str(entry.path), backslash=False)
        if entry.is_dir:
            if found is None:
                plan.changes.append(MakeDir(where))
            elif not found.is_dir:
                raise RefusedError(f"{shown(where)} is a file on {target.description} and "
                                   f"{local} a folder; remove the file first (vhdfs rm); "
                                   "nothing was written")
            continue
        if found is not None and found.is_dir:
            raise RefusedError(f"{shown(where)} is a folder on {target.description} and "
                               f"{local} a file; name another GUESTPATH; nothing was written")
        if found is not None:
            in_the_way.append(where)
        plan.changes.append(WriteFile(where, entry.path, entry.size,
                                      _existing(found) if found is not None else None))
    return in_the_way


# ---------------------------------------------------------------------------- mkdir
def plan_mkdir(volumes: DiskVolumes, text: str, number: int | None, *,
               parents: bool) -> Plan:
    """`mkdir GUESTPATH` (its folder must exist) or `mkdir -p` (every missing folder on the
    way; an existing folder is no change)."""
    dest = _destination(volumes, text, number)
    target = dest.target
    if dest.found is not None:
        if dest.found.is_dir and parents:
            return Plan(target, dest.found.parts)
        kind = "a folder" if dest.found.is_dir else "a file"
        raise RefusedError(f"{shown(dest.found.parts)} exists on {target.description} ({kind})"
                           + ("; -p accepts an existing folder" if dest.found.is_dir else ""))
    if len(dest.rest) > 1 and not parents:
        raise _missing_folder(dest, "use -p to create it too")
    plan = Plan(target, (*dest.folder.parts, *dest.rest))
    made = dest.folder.parts
    for name in dest.rest:
        check_new_name(target, name)
        made = (*made, name)
        plan.changes.append(MakeDir(made))
    return _checked(plan)


# ---------------------------------------------------------------------------- rm
def _locate_entry(volumes: DiskVolumes, path: GuestPath, number: int | None) -> Found:
    """`locate` without following a link at the end: rm removes a link, not its target."""
    if number is not None:
        volume = volumes.get(number)
        volume.require_fs()
        hits = [resolve(volume, path, follow_last=False)]
        if hits[0] is None:
            raise GuestPathNotFound(f"{escape(path.text, backslash=False)}: not found on "
                                    f"{volume.describe()}")
    else:
        hits = [resolve(volume, path, follow_last=False) for volume in volumes.with_fs()]
    found = [hit for hit in hits if hit is not None]
    if len(found) == 1:
        return found[0]
    if not found:
        return locate(volumes, path, number)  # its message: the volumes searched
    where = ", ".join(hit.volume.describe() for hit in found)
    raise AmbiguousPath(f"{escape(path.text, backslash=False)} exists on {where}; choose "
                        "one with --volume N")


def plan_rm(volumes: DiskVolumes, text: str, number: int | None, *,
            recursive: bool) -> Plan:
    """`rm GUESTPATH`: one file (or link); a folder only with `recursive`, everything in it
    first (deepest first); never a volume's root folder."""
    path = parse_guest_path(text)
    if not path.parts:
        raise RefusedError(f"{escape(text, backslash=False)}: the root folder of a volume "
                           "cannot be removed; remove what is in it")
    found = _locate_entry(volumes, path, number)
    if not found.parts:  # a path that leads back to the root (a link to /)
        raise RefusedError(f"{escape(text, backslash=False)}: is the root folder of "
                           f"{found.volume.describe()}; it cannot be removed")
    target = target_of(found.volume)
    plan = Plan(target, found.parts)
    if not found.is_dir:
        plan.changes.append(Remove(found.parts, False, int(found.file.info.meta.size)))
        return _checked(plan)
    if not recursive:
        raise RefusedError(f"{shown(found.parts)} is a folder on {target.description}; use "
                           "-r to remove it and everything in it")

    def walk(folder: Found) -> None:
        for entry, child in listing(folder):
            if child is None:
                raise RefusedError(f"{escape(entry.path, backslash=False)} on "
                                   f"{target.description} is damaged (its metadata cannot be "
                                   "read); repair the file system first (chkdsk, fsck); "
                                   "nothing was removed")
            if entry.kind == "dir":
                walk(child)
            else:
                plan.changes.append(Remove(child.parts, False, entry.size))
        plan.changes.append(Remove(folder.parts, True))

    walk(found)
    return _checked(plan)
