"""Find the other differencing children of a parent: committing into the parent changes
what they read, so they become invalid."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vhdfs.errors import FormatError, VhdfsError
from vhdfs.resolve import IMAGE_SUFFIXES
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.dynheader import HEADER_SIZE, DynamicHeader
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer
from vhdfs.vhdx.layer import VhdxLayer, is_vhdx


def read_ids(path: Path) -> tuple[bytes, bytes | None] | None:
    """(unique id, parent unique id or None) of a VHD or VHDX file, or None when it is neither.
    A glance at two ids takes no lock: a child another process holds is still found."""
    try:
        with LocalFile(path, lock=None) as source:
            if is_vhdx(source):  # a VHDX child names its parent's DataWriteGuid
                layer = VhdxLayer(source)
                return layer.unique_id, layer.parent_id
            size = source.size()
            if size < 2 * FOOTER_SIZE:
                return None
            footer = Footer.parse(source.read_at(size - FOOTER_SIZE, FOOTER_SIZE), source.name,
                                  size - FOOTER_SIZE, verify=False)
            if footer.disk_type != DiskType.DIFFERENCING or footer.data_offset + HEADER_SIZE > size:
                return footer.unique_id, None
            header = DynamicHeader.parse(source.read_at(footer.data_offset, HEADER_SIZE),
                                         source.name, footer.data_offset, verify=False)
            return footer.unique_id, header.parent_unique_id
    except (VhdfsError, FormatError, OSError):
        return None


def unique_id_of(path: Path) -> bytes | None:
    ids = read_ids(path)
    return ids[0] if ids else None


def parent_id_of(path: Path) -> bytes | None:
    """The parent unique id a differencing disk expects, or None for anything else."""
    ids = read_ids(path)
    return ids[1] if ids else None


def find_children(parent_id: bytes, folders: list[Path], exclude: list[Path]) -> list[Path]:
    """Image files directly in `folders` whose parent id is `parent_id` (not recursive)."""
    skip = set()
    for path in exclude:
        try:
            info = path.stat()
            skip.add((info.st_dev, info.st_ino))
        except OSError:
            pass
    found: list[Path] = []
    seen_folders: set[str] = set()
    for folder in folders:
        key = os.path.realpath(folder)
        if key in seen_folders:
            continue
        seen_folders.add(key)
        try:
            entries = sorted(Path(folder).iterdir())
        except OSError:
            continue
        for path in entries:
            if not path.name.lower().endswith(IMAGE_SUFFIXES) or not path.is_file():
                continue
            info = path.stat()
            if (info.st_dev, info.st_ino) in skip:
                continue
            if parent_id_of(path) == parent_id:
                skip.add((info.st_dev, info.st_ino))
                found.append(path)
    return found


def find_committing_child(parent: str, state: dict, search: list[str], parent_ids: list[bytes],
                          child_id_text: Callable[[Path], str | None]) -> Path | None:
    """The child an unfinished commit into `parent` was copying (`state`: its journal or
    mark, as journals.commit_state says), if it can be found: the file the records name,
    else a child of one of `parent_ids` beside it, beside the parent or in `search`, whose
    id (`child_id_text`, written as its format writes ids) is the one the records name."""
    wanted = state.get("child_unique_id")
    named = state.get("child")

    def is_it(path: Path) -> bool:
        found = child_id_text(path)
        return found is not None and found == wanted
    if named and os.path.isfile(named) and is_it(Path(named)):
        return Path(named)
    folders = [Path(parent).parent] + [Path(folder) for folder in search]
    if named:
        folders.insert(0, Path(named).parent)
    for parent_id in parent_ids:
        for path in find_children(parent_id, folders, exclude=[]):
            if is_it(path):
                return path
    return None


def children_warning(image: Path, unique_id: bytes, search: list[str]) -> str | None:
    """The warning to give before the first write into `image` (a `mount --rw`, any new
    writer): its children, found beside it and in `search`, read it under their own data
    and become invalid once it changes. None when none is found."""
    folders = [image.parent] + [Path(folder) for folder in search]
    children = find_children(unique_id, folders, exclude=[image])
    if not children:
        return None
    return (f"{image} has children that become invalid once it is written (they would read "
            f"changed data under their own): {', '.join(map(str, children))}; mount it "
            f"read-only, or write into a new child (vhdfs create --parent {image} NEW.vhd)")
