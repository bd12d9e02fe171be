"""What set-parent does alike for either format (vhdfs.maintain.setparent, setparent_vhdx)
before it re-links a child: it holds the child alone, checks that the child is a
differencing disk with no damage that set-parent does not mend, and that the new parent is
neither the child nor a disk whose own chain holds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vhdfs.errors import ChainCycle, ChainError, RefusedError, UsageError
from vhdfs.image import DiskType, ImageLayer
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.findings import FileScan, scan_or_refuse
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources import locks
from vhdfs.sources.base import Source
from vhdfs.sources.locks import Mode

R = TypeVar("R")  # what a format's set-parent returns


def run_holding_child(child: str, parent: str, force: bool, options: OpenOptions | None,
                      faults: Faults | None, relink: Callable[[Path, Path, bool, OpenOptions,
                                                               Faults], R]) -> R:
    """`relink(child, parent, force, options, faults)` with the child held alone from its
    first read to its last write: a mount writing it would write its own copy of the link
    (a VHD header, VHDX metadata) over the new one."""
    options = options or OpenOptions()
    faults = faults or Faults.from_env()
    with locks.lock_path(Path(child), Mode.EXCLUSIVE):
        return relink(Path(child), Path(parent), force, options, faults)


def check_child(probe: Source, child_path: Path, scan: Callable[[Source], FileScan],
                tolerated: set[str]) -> FileScan:
    """The scan of the child (`scan`: its format's check) read through `probe`; refused
    when it finds an error not in `tolerated` or the child is not a differencing disk."""
    found = scan_or_refuse(probe, scan, "set-parent")
    problems = [f.message for f in found.errors if f.code not in tolerated]
    if problems:
        raise RefusedError(f"{child_path}: has damage set-parent does not mend: {problems[0]}; "
                           f"run vhdfs check --repair {child_path} first")
    if found.disk_type != DiskType.DIFFERENCING:
        raise UsageError(f"{child_path}: is a {DiskType(found.disk_type).name.lower()} disk, not "
                         "a differencing child: it has no parent link to set")
    return found


def check_no_cycle(child_identity: tuple, child_name: str, parent_path: Path,
                   parent: ImageLayer, options: OpenOptions) -> list[str]:
    """Refuse a parent that is the child (by file identity) or whose own chain holds it;
    the warnings to give when the parent's chain cannot be followed to its end."""
    if parent.source.identity() == child_identity:
        raise RefusedError(f"{parent_path}: is the child itself; a disk cannot be its own parent")
    if not parent.is_differencing:
        return []
    try:
        with open_chain(str(parent_path), options) as chain:
            ids = {layer.source.identity() for layer in chain.layers}
    except ChainError as exc:
        return [f"the new parent's own chain is incomplete ({exc})"]
    if child_identity in ids:
        raise ChainCycle(f"{parent_path}: its own chain contains {child_name}; linking them "
                         "would make a parent loop")
    return []
