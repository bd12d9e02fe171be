"""vhdfs resize: a disk image made larger or smaller in place (what `qemu-img resize` does for
raw and qcow2, and refuses for VHD), safe: the image held exclusively, nothing cut that holds
data unless asked, a chain never left disagreeing silently, and a crash at any moment leaving
the old disk or the new one (the ordered writes are vhdfs.vhd.resize's).

Which image may change size:
- a fixed or dynamic VHD: yes. One with children (differencing disks over it, found beside
  it or in --search) only with --force: each child must then be resized to the same size
  (or recreated), as the chain's sizes must agree;
- a differencing VHD: only to its parent's size. A child cannot change size alone, so the
  order is the base first, then each child, as Hyper-V has it;
- a dynamic VHDX: grows (through its log, vhdfs.vhdx.resize); shrinking it, a fixed or a
  differencing VHDX are refused with what to do instead;
- a raw image or a blob: refused, each with what to do instead.
Partition tables and file systems are never touched: the report names the next step (the
backup GPT moved with `sgdisk -e`, then the guest's own resize tools).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.azure.location import looks_remote
from vhdfs.chain import Chain
from vhdfs.errors import (
    ChecksumError,
    FormatError,
    ParentMismatch,
    RefusedError,
    UsageError,
    VhdfsError,
)
from vhdfs.image import SECTOR, RunKind
from vhdfs.maintain.siblings import find_children
from vhdfs.partitions import PartitionTable, read_table
from vhdfs.quoting import escape
from vhdfs.resolve import OpenOptions, find_parent, looks_like_vhd
from vhdfs.sources.local import LocalFile
from vhdfs.units import human, parse_size
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer
from vhdfs.vhd.layer import Layer
from vhdfs.vhd.resize import resize_vhd
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.layer import VhdxLayer, is_vhdx
from vhdfs.vhdx.resize import grow_vhdx

log = logging.getLogger("vhdfs")

MiB = 1 << 20
# The backup GPT (entries and header) at the end of the disk: 33 sectors for 128 entries.
GPT_BACKUP_BYTES = 33 * SECTOR
SCAN_PIECE = 1 << 30  # the range past a new end is mapped in pieces of this size
READ_PIECE = 4 * MiB
_ZERO_PIECE = bytes(READ_PIECE)
_ZERO_SECTOR = bytes(SECTOR)


@dataclass
class ResizeReport:
    image: str
    format: str  # "vhd", "vhdx"
    kind: str  # fixed, dynamic, differencing
    old_size: int
    new_size: int
    old_file_size: int
    new_file_size: int
    table_entries: int | None  # the BAT's size after the resize (None: a fixed disk)
    moved_blocks: int  # blocks copied to the end to make room for a larger BAT
    cut: int  # bytes of non-zero sectors past the new end that a --force shrink dropped
    partition_table: str  # mbr, gpt, none (or "unread": a damaged table)
    parent: str | None  # a differencing disk's parent, at the new size
    children: list[str]  # children (found beside it or in --search) that now need resizing
    finished_interrupted: bool  # an earlier, interrupted resize was finished first
    next_steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.old_size != self.new_size


def new_size_for(current: int, spec: str | None, *, align: bool) -> int:
    """SIZE as given (`10G`, or `+1G` / `-512M` relative to `current`), rounded up to a whole
    MiB with `align` (Azure's rule); without SIZE, `align` rounds the current size."""
    if spec is None or spec == "":
        if not align:
            raise UsageError("resize needs SIZE (e.g. 10G, +1G), or --align to round the "
                             "current size up to a whole MiB")
        size = current
    elif spec[0] in "+-":
        delta = parse_size(spec[1:], "SIZE")
        size = current + delta if spec[0] == "+" else current - delta
    else:
        size = parse_size(spec, "SIZE")
    if align:
        size = -(-size // MiB) * MiB
    if size <= 0:
        raise UsageError(f"SIZE {spec}: the disk would have {size} bytes; give a positive size")
    if size % SECTOR:
        up = -(-size // SECTOR) * SECTOR
        raise UsageError(f"SIZE {spec} is {size} bytes, not a whole number of 512-byte sectors; "
                         f"use {up} (or --align for a whole MiB)")
    return size


def resize(image: str, size: str | None, *, align: bool = False, force: bool = False,
           options: OpenOptions | None = None) -> ResizeReport:
    """Give IMAGE (a local VHD) the virtual size SIZE in place."""
    started = time.monotonic()
    options = options or OpenOptions()
    shown = escape(image, backslash=False)
    if looks_remote(image):
        raise UsageError(f"{shown}: resize changes a local file; for a disk in blob storage, "
                         "download it (vhdfs convert), resize the file and upload it again")
    source = LocalFile(image, writable=True)  # held exclusively until the end
    parent_layer: Layer | None = None
    try:
        if is_vhdx(source):
            return _resize_vhdx(image, source, size, align=align, force=force, options=options,
                                started=started)
        if not looks_like_vhd(source):
            raise RefusedError(f"{shown}: not a VHD (no footer): a raw image changes size with "
                               f"truncate -s SIZE {shown}")
        layer, finished = _open_for_resize(source, options)
        new_size = new_size_for(layer.size, size, align=align)
        kind = layer.disk_type.name.lower()
        children: list[str] = []
        if layer.is_differencing:
            parent_layer = _parent_at(layer, new_size, options, source)
        elif new_size != layer.size:
            children = _children(image, layer, options, force, new_size)
        # A child's disk is itself over its parent (read at its old size, for the next steps).
        table = _partition_table(layer, parent_layer)
        cut = 0
        if new_size < layer.size:
            cut = _check_cut(image, layer, source, new_size, table, force)
        vhd = resize_vhd(source, layer, new_size)
        report = ResizeReport(
            image=image, format="vhd", kind=kind, old_size=vhd.old_size, new_size=new_size,
            old_file_size=vhd.old_file_size, new_file_size=vhd.new_file_size,
            table_entries=None if layer.disk_type == DiskType.FIXED else vhd.new_table_entries,
            moved_blocks=len(vhd.moved_blocks), cut=cut,
            partition_table=table.scheme if table is not None else "unread",
            parent=parent_layer.name if parent_layer is not None else None,
            children=children, finished_interrupted=finished)
        report.next_steps = _next_steps(report, shown)
        report.seconds = round(time.monotonic() - started, 3)
        return report
    finally:
        if parent_layer is not None:
            parent_layer.source.close()
        source.close()


# ---------------------------------------------------------------- VHDX
def _resize_vhdx(image: str, source: LocalFile, size: str | None, *, align: bool, force: bool,
                 options: OpenOptions, started: float) -> ResizeReport:
    """A dynamic VHDX grows through its log (vhdfs.vhdx.resize); the rest is refused, each
    with what to do instead."""
    shown = escape(image, backslash=False)
    layer = VhdxLayer(source, writable=True)
    try:
        instead = (f"convert it to a VHD, resize that and convert back: vhdfs convert {shown} "
                   f"disk.vhd --to dynamic && vhdfs resize disk.vhd SIZE && vhdfs convert "
                   f"disk.vhd NEW.vhdx --to vhdx (or Resize-VHD in Hyper-V)")
        if layer.is_differencing:
            raise RefusedError(f"{shown}: is a differencing VHDX (a checkpoint), whose size is its "
                               f"parent's; vhdfs resizes dynamic VHDX only; merge the chain "
                               f"first (vhdfs commit) or flatten it: vhdfs convert {shown} "
                               "NEW.vhdx --to vhdx")
        if layer.disk_type == DiskType.FIXED:
            raise RefusedError(f"{shown}: is a fixed VHDX; vhdfs grows dynamic VHDX only (a "
                               f"fixed one needs every new block written); {instead}")
        new_size = new_size_for(layer.size, size, align=align)
        old_size, old_file_size = layer.size, source.size()
        if new_size < old_size:
            raise RefusedError(f"{shown}: shrinking a VHDX is not supported (vhdfs grows dynamic "
                               f"VHDX only); {instead}")
        children = []
        if new_size != old_size:
            children = _children(image, layer, options, force, new_size)
        table = _partition_table(layer, None)
        entries = fmt.bat_entry_count(old_size, layer.block_size, layer.logical_sector_size, False)
        if new_size != old_size:
            entries = grow_vhdx(layer, new_size)
    finally:
        layer.close()
    report = ResizeReport(
        image=image, format="vhdx", kind="dynamic", old_size=old_size, new_size=new_size,
        old_file_size=old_file_size, new_file_size=os.stat(image).st_size,
        table_entries=entries, moved_blocks=0, cut=0,
        partition_table=table.scheme if table is not None else "unread", parent=None,
        children=children, finished_interrupted=False)
    report.next_steps = _next_steps(report, shown)
    report.seconds = round(time.monotonic() - started, 3)
    return report


# ---------------------------------------------------------------- opening
def _open_for_resize(source: LocalFile, options: OpenOptions) -> tuple[Layer, bool]:
    """The layer, opened as a writer opens it (damage refused). A footer copy that differs
    from the trailing footer in the size alone is what an interrupted resize leaves: the
    trailing footer counts, and the copy is written from it first."""
    try:
        return Layer(source, size_rule=options.size_rule, writable=True), False
    except ChecksumError:
        size = source.size()
        if size < 2 * FOOTER_SIZE:
            raise
        copy_raw = source.read_at(0, FOOTER_SIZE)
        trailing_raw = source.read_at(size - FOOTER_SIZE, FOOTER_SIZE)
        try:
            copy = Footer.parse(copy_raw, source.name, 0)
            trailing = Footer.parse(trailing_raw, source.name, size - FOOTER_SIZE)
        except FormatError:
            raise FormatError(source.name, "its footers are damaged", "run vhdfs check --repair "
                              "first") from None
        if trailing.disk_type == DiskType.FIXED or \
                copy.resized(trailing.current_size).build() != trailing_raw:
            raise
        log.warning("%s: an earlier resize was interrupted after its trailing footer (%d bytes) "
                    "and before the copy at offset 0 (%d bytes); finishing it first",
                    source.name, trailing.current_size, copy.current_size)
        source.write_at(0, trailing_raw)
        source.sync()
        return Layer(source, size_rule=options.size_rule, writable=True), True


def _parent_at(child: Layer, new_size: int, options: OpenOptions, source: LocalFile) -> Layer:
    """The parent of the differencing disk `child` if it has `new_size` bytes; else the
    refusal that names the order (the base first, then each child)."""
    seen = {source.identity()}
    old_size = child.size
    # The question asked of the parent search: which file is this child's parent once the
    # child has `new_size` bytes? The search compares the sizes of the two.
    child.size = new_size
    try:
        parent, _ = find_parent(child, options, set(seen))
        return parent
    except ParentMismatch as mismatch:
        problem: Exception = mismatch
    finally:
        child.size = old_size
    name = escape(child.name, backslash=False)
    try:
        parent, _ = find_parent(child, options, set(seen))
    except ParentMismatch:
        raise problem from None
    where = escape(parent.name, backslash=False)
    parent_size = parent.size
    parent.source.close()
    raise RefusedError(
        f"{name}: a differencing disk has its parent's size ({where}: {parent_size} bytes, "
        f"{human(parent_size)}) and cannot change size alone; resize the chain from its base: "
        f"first the base (vhdfs resize BASE {new_size} --force, as it has children), then each "
        f"child in order from the base up: vhdfs resize {name} {new_size} (or recreate it: "
        f"vhdfs create --parent PARENT NEW.vhd)")


def _children(image: str, layer: Layer | VhdxLayer, options: OpenOptions, force: bool,
              new_size: int) -> list[str]:
    path = Path(image)
    folders = [path.parent] + [Path(folder) for folder in options.search]
    children = [str(child) for child in find_children(layer.unique_id, folders, exclude=[path])]
    if not children:
        return []
    names = ", ".join(escape(c, backslash=False) for c in children)
    shown = escape(image, backslash=False)
    if not force:
        raise RefusedError(
            f"{shown}: has children that stop opening once its size changes (a chain's sizes "
            f"must agree): {names}; to resize the whole chain, run vhdfs resize {shown} "
            f"{new_size} --force, then resize each child to the same size, from the base up "
            f"(vhdfs resize CHILD {new_size}), or recreate them (vhdfs create --parent "
            f"{shown} NEW.vhd)")
    log.warning("%s: its children no longer open until each is resized to %d bytes too "
                "(vhdfs resize CHILD %d, from the base up): %s", shown, new_size, new_size,
                names)
    return children


# ---------------------------------------------------------------- what is cut
def _partition_table(layer: Layer | VhdxLayer, parent: Layer | None) -> PartitionTable | None:
    try:
        return read_table(Chain([layer] if parent is None else [layer, parent]))
    except VhdfsError as exc:  # damaged, or past a shrunk parent's end: resized without it
        log.warning("%s: the partition table could not be read (%s); resizing the disk "
                    "without it", layer.name, exc)
        return None


def _data_past(layer: Layer, source: LocalFile, start: int, end: int) -> tuple[int, int | None]:
    """(bytes in sectors that are not all zeros in [start, end), the first such sector's
    offset), of what the layer itself holds there."""
    holding, first = 0, None
    for piece in range(start, end, SCAN_PIECE):
        for run in layer.map(piece, min(SCAN_PIECE, end - piece)):
            if run.kind is not RunKind.HERE:
                continue
            spans = [(run.file_offset, run.file_offset + run.length)]
            if layer.disk_type == DiskType.FIXED:  # holes of a sparse file read as zeros
                spans = source.data_ranges(*spans[0])
            for lo, hi in spans:
                for at in range(lo, hi, READ_PIECE):
                    data = source.read_at(at, min(READ_PIECE, hi - at))
                    if data == _ZERO_PIECE[:len(data)]:
                        continue
                    for sector in range(0, len(data), SECTOR):
                        if data[sector:sector + SECTOR] != _ZERO_SECTOR:
                            holding += SECTOR
                            if first is None:
                                first = run.offset + (at - run.file_offset) + sector
    return holding, first


def _check_cut(image: str, layer: Layer, source: LocalFile, new_size: int,
               table: PartitionTable | None, force: bool) -> int:
    """Refuse a shrink that cuts data or partitions (unless --force, which says what goes);
    returns the bytes of data cut."""
    shown = escape(image, backslash=False)
    old_size = layer.size
    scan_end = old_size
    limit = new_size
    if table is not None and table.scheme == "gpt":
        # The backup GPT at the old end is cut and written again at the new end (sgdisk -e);
        # the partitions must end before the new one's place.
        scan_end = max(new_size, old_size - GPT_BACKUP_BYTES)
        limit = new_size - GPT_BACKUP_BYTES
    problems = []
    for part in table.partitions if table is not None else []:
        if part.end > limit:
            problems.append(f"partition {part.number} ({part.type_name}) ends at byte {part.end} "
                            f"({human(part.end)}), past {limit}")
    holding, first = _data_past(layer, source, new_size, scan_end)
    if holding:
        problems.append(f"{holding} bytes ({human(holding)}) of data past the new end, the first "
                        f"at offset {first}")
    if not problems:
        return 0
    what = "; ".join(problems)
    if not force:
        backup = GPT_BACKUP_BYTES if table is not None and table.scheme == "gpt" else 0
        ends = [part.end + backup for part in (table.partitions if table is not None else [])]
        keep = max(ends, default=0)
        instead = f" (or keep at least {keep} bytes)" if keep > new_size else ""
        raise RefusedError(
            f"{shown}: shrinking to {new_size} bytes ({human(new_size)}) would cut {what}; shrink "
            "the file system and the partition in the guest first (ntfsresize or resize2fs, then "
            f"sgdisk or parted){instead}, or cut anyway with --force")
    log.warning("%s: --force: cutting %s", shown, what)
    return holding


# ---------------------------------------------------------------- what to do next
def _next_steps(report: ResizeReport, shown: str) -> list[str]:
    steps: list[str] = []
    if not report.changed:
        return steps
    for child in report.children:
        steps.append(f"resize each child to the same size, from the base up: vhdfs resize "
                     f"{escape(child, backslash=False)} {report.new_size}")
    grew = report.new_size > report.old_size
    scheme = report.partition_table
    mount = f"vhdfs mount --rw {shown} MNT && sgdisk -e MNT/disk.raw && vhdfs umount MNT"
    if scheme == "gpt":
        steps.append("the partition table is not changed: its backup GPT is still at the old end; "
                     f"move it to the new end with sgdisk -e ({mount})")
    if grew and scheme in ("gpt", "mbr"):
        steps.append("then grow the last partition and its file system with the guest's own "
                     "tools: Windows: Disk Management's Extend Volume (or diskpart extend); "
                     "Linux: growpart, then resize2fs or xfs_growfs")
    elif grew and scheme == "none":
        steps.append("no partition table: a file system on the whole disk grows with its own "
                     "tool (resize2fs, ntfsresize, xfs_growfs)")
    if report.cut:
        steps.append(f"{report.cut} bytes of data past the new end were cut (--force); check the "
                     "guest's file systems (vhdfs ls, fsck)")
    return steps


def describe(report: ResizeReport) -> str:
    shown = escape(report.image, backslash=False)
    if not report.changed:
        return f"{shown}: already {report.new_size} bytes ({human(report.new_size)}); nothing changed"
    how = "grew" if report.new_size > report.old_size else "shrank"
    text = (f"{shown}: {how} from {report.old_size} bytes ({human(report.old_size)}) to "
            f"{report.new_size} bytes ({human(report.new_size)}), {report.kind} "
            f"{report.format.upper()}; the file is {report.new_file_size} bytes")
    if report.moved_blocks:
        text += f"; {report.moved_blocks} block(s) moved to make room for the BAT"
    lines = [text] + [f"next: {step}" for step in report.next_steps]
    return "\n".join(lines)


__all__ = ["ResizeReport", "describe", "new_size_for", "resize"]
