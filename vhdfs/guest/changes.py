"""What the top layer of a chain changes in the guest: sectors -> volumes -> files.

1. The top layer's own sectors come from its map (runs HERE); sectors whose bytes equal what the
   parent shows are dropped (a tool that rewrites a sector with the same bytes changed nothing).
2. Each changed range is placed in its volume (or named: partition table, unpartitioned space).
3. In each volume with changes the file tree is walked once, and each file's data runs (TSK's
   attribute runs) are checked against the changed ranges: only the overlaps are kept, so the
   index from clusters to files is built just for the clusters that changed.
4. On NTFS, changed sectors inside $MFT are mapped to MFT record numbers (byte offset / record
   size) and so to the file of each record: small files live inside their record (resident
   data), and every file's size and times do too.
5. Whether a file is new or modified is answered by looking its path up in the parent's view;
   an MFT record in use in the parent but free in the top is a deleted file.
File-system metadata ($MFT's bitmap, $LogFile, $Bitmap, FAT tables, the ext journal) is listed
apart from the guest's own files and directories.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytsk3

from vhdfs.chain import Chain
from vhdfs.guest.errors import FileSystemError
from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import META_DIR, META_VIRT, META_VIRT_DIR, resolve
from vhdfs.guest.volumes import DiskVolumes, Volume, open_volumes
from vhdfs.image import SECTOR, RunKind

log = logging.getLogger("vhdfs")
MAP_STEP = 256 * 1024 * 1024  # map the top layer in pieces of this many bytes
COMPARE_STEP = 1024 * 1024
NTFS_MFT_INODE = 0
NTFS_FIRST_USER_RECORD = 24  # records 0-23 are reserved for the file system's own files
NTFS_ATTR_NAMES = {0x10: "standard information", 0x20: "attribute list", 0x30: "file name",
                   0x80: "data", 0x90: "index", 0xA0: "index", 0xB0: "bitmap", 0xC0: "reparse point",
                   0x100: "logged utility stream"}
EXT_SPECIAL_INODES = {7: "<resize inode>", 8: "<journal>"}
RUN_SKIP = int(pytsk3.TSK_FS_ATTR_RUN_FLAG_FILLER) | int(pytsk3.TSK_FS_ATTR_RUN_FLAG_SPARSE)
ATTR_NONRES = int(pytsk3.TSK_FS_ATTR_NONRES)
META_ALLOC = int(pytsk3.TSK_FS_META_FLAG_ALLOC)
NAME_ALLOC = int(pytsk3.TSK_FS_NAME_FLAG_ALLOC)


# ---------------------------------------------------------------------------- ranges
class Ranges:
    """Sorted, merged [start, end) byte ranges with overlap queries."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.starts = [r[0] for r in merged]
        self.ends = [r[1] for r in merged]

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends, strict=True)

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def overlaps(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of [start, end) inside the ranges."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.starts) and self.starts[i] < end:
            lo, hi = max(self.starts[i], start), min(self.ends[i], end)
            if lo < hi:
                yield lo, hi
            i += 1

    def overlap(self, start: int, end: int) -> int:
        return sum(hi - lo for lo, hi in self.overlaps(start, end))

    def clip(self, start: int, end: int) -> Ranges:
        """The ranges inside [start, end), shifted so that `start` is 0."""
        return Ranges([(lo - start, hi - start) for lo, hi in self.overlaps(start, end)])


def written_ranges(chain: Chain) -> list[tuple[int, int]]:
    """Disk ranges whose sectors the top layer holds itself."""
    out: list[tuple[int, int]] = []
    top = chain.top
    for offset in range(0, chain.size, MAP_STEP):
        for run in top.map(offset, min(MAP_STEP, chain.size - offset)):
            if run.kind is RunKind.HERE:
                if out and out[-1][1] == run.offset:
                    out[-1] = (out[-1][0], run.offset + run.length)
                else:
                    out.append((run.offset, run.offset + run.length))
    return out


def differing_ranges(chain: Chain, parent: Chain, ranges: list[tuple[int, int]]
                     ) -> tuple[list[tuple[int, int]], int]:
    """The sectors of `ranges` whose bytes differ between the chain and its parent view."""
    out: list[tuple[int, int]] = []
    identical = 0
    for start, end in ranges:
        for offset in range(start, end, COMPARE_STEP):
            size = min(COMPARE_STEP, end - offset)
            mine = chain.read(offset, size)
            theirs = parent.read(offset, size) if offset < parent.size else b""
            theirs += bytes(size - len(theirs))
            if mine == theirs:
                identical += size
                continue
            for sector in range(0, size, SECTOR):
                if mine[sector:sector + SECTOR] == theirs[sector:sector + SECTOR]:
                    identical += min(SECTOR, size - sector)
                    continue
                lo = offset + sector
                hi = min(lo + SECTOR, end)
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
    return out, identical


# ---------------------------------------------------------------------------- results
@dataclass
class ChangedItem:
    path: str
    kind: str  # "file", "dir", "other"
    status: str = "modified"  # "added", "modified", "deleted", "unlinked"
    what: dict[str, int] = field(default_factory=dict)  # part ("data", "MFT record", ...) -> bytes
    metadata: bool = False  # a structure of the file system, not a guest file

    @property
    def changed_bytes(self) -> int:
        return sum(self.what.values())

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "status": self.status,
                "bytes": self.changed_bytes, "what": dict(self.what)}


@dataclass
class VolumeChanges:
    volume: Volume
    changed_bytes: int
    ranges: int
    items: list[ChangedItem] = field(default_factory=list)  # guest files and directories
    metadata: list[ChangedItem] = field(default_factory=list)
    unattributed: int = 0  # changed bytes in no file: free space or unnamed fs structures
    error: str = ""

    def to_json(self) -> dict:
        v = self.volume
        return {"volume": v.number, "file_system": v.fs_type or None, "label": v.label,
                "changed_bytes": self.changed_bytes, "ranges": self.ranges,
                "files": [i.to_json() for i in self.items],
                "metadata": [i.to_json() for i in self.metadata],
                "unattributed_bytes": self.unattributed, "error": self.error or None}


@dataclass
class Changes:
    top: str
    parent: str
    written_bytes: int
    identical_bytes: int
    changed_bytes: int
    volumes: list[VolumeChanges] = field(default_factory=list)
    outside: list[dict] = field(default_factory=list)  # {"what", "offset", "bytes"}

    def to_json(self) -> dict:
        return {"top": self.top, "parent": self.parent, "written_bytes": self.written_bytes,
                "identical_bytes": self.identical_bytes, "changed_bytes": self.changed_bytes,
                "volumes": [v.to_json() for v in self.volumes], "outside_volumes": self.outside}


# ---------------------------------------------------------------------------- file tree
@dataclass
class _Node:
    inode: int
    path: str
    kind: str
    metadata: bool


def _walk(volume: Volume) -> Iterator[tuple[_Node, pytsk3.File]]:
    """Every allocated file and directory of the volume once (by inode), with one of its paths."""
    fs = volume.require_fs()
    root = tsk_call(volume.image, f"{volume.describe()}: root directory", fs.open, "/")
    root_inode = int(root.info.meta.addr)
    yield _Node(root_inode, "/", "dir", False), root
    seen = {root_inode}
    stack = [("", root)]
    ntfs = volume.fs_type == "NTFS"
    while stack:
        base, directory = stack.pop()
        try:
            entries = tsk_call(volume.image, f"{volume.describe()}: {base or '/'}",
                               directory.as_directory)
        except FileSystemError as exc:
            if not base:
                raise
            log.warning(f"{exc}; changes inside {base} are not attributed to its files")
            continue
        for entry in entries:
            name, meta = entry.info.name, entry.info.meta
            if name is None or meta is None or not int(name.flags) & NAME_ALLOC:
                continue
            text = name.name.decode("utf-8", errors="surrogateescape")
            if text in (".", ".."):
                continue
            meta_type = int(meta.type)
            if meta_type == META_VIRT_DIR:
                continue  # TSK's $OrphanFiles
            inode = int(meta.addr)
            if inode in seen:
                continue
            seen.add(inode)
            path = f"{base}/{text}"
            is_dir = meta_type == META_DIR
            metadata = meta_type == META_VIRT or (ntfs and (
                (base == "" and text.startswith("$")) or path.startswith("/$Extend/")
                or inode < NTFS_FIRST_USER_RECORD))
            yield _Node(inode, path, "dir" if is_dir else "file", metadata), entry
            if is_dir:
                stack.append((path, entry))


def _extra_files(volume: Volume) -> Iterator[tuple[_Node, pytsk3.File]]:
    """File-system files that are not in the tree (ext's journal)."""
    if not volume.fs_type.startswith("ext"):
        return
    fs = volume.require_fs()
    for inode, label in EXT_SPECIAL_INODES.items():
        try:
            yield _Node(inode, label, "other", True), fs.open_meta(inode=inode)
        except (OSError, RuntimeError):
            continue


def _part_name(volume: Volume, attr_type: int, attr_name: str | None, is_dir: bool) -> str:
    if volume.fs_type == "NTFS":
        base = NTFS_ATTR_NAMES.get(attr_type, f"attribute 0x{attr_type:x}")
        if attr_type == 0x80 and attr_name:
            return f"stream {attr_name}"
        return base
    return "entries" if is_dir else "data"


# ---------------------------------------------------------------------------- NTFS records
def _ntfs_record_size(volume: Volume) -> int:
    boot = volume.image.read_bytes(0, 512)
    cluster = int.from_bytes(boot[0x0B:0x0D], "little") * boot[0x0D]
    raw = int.from_bytes(boot[0x40:0x41], "little", signed=True)
    return 1 << -raw if raw < 0 else raw * cluster


def _mft_runs(file: pytsk3.File, block_size: int) -> list[tuple[int, int, int]]:
    """($MFT byte offset, volume byte offset, length) of the $MFT's data runs."""
    runs = []
    for attr in file:
        if int(attr.info.type) != 0x80 or not int(attr.info.flags) & ATTR_NONRES:
            continue
        for run in attr:
            if int(run.flags) & RUN_SKIP:
                continue
            runs.append((int(run.offset) * block_size, int(run.addr) * block_size,
                         int(run.len) * block_size))
    return runs


def _changed_records(volume: Volume, mft: pytsk3.File, changed: Ranges) -> dict[int, int]:
    """MFT record number -> changed bytes within it."""
    record_size = _ntfs_record_size(volume)
    records: dict[int, int] = {}
    for mft_offset, vol_offset, length in _mft_runs(mft, volume.block_size):
        for lo, hi in changed.overlaps(vol_offset, vol_offset + length):
            pos = lo - vol_offset + mft_offset
            end = hi - vol_offset + mft_offset
            while pos < end:
                number = pos // record_size
                upto = min(end, (number + 1) * record_size)
                records[number] = records.get(number, 0) + upto - pos
                pos = upto
    return records


def _record_in_use(volume: Volume, number: int) -> bool:
    try:
        meta = volume.require_fs().open_meta(inode=number).info.meta
    except (OSError, RuntimeError):
        return False
    return meta is not None and bool(int(meta.flags) & META_ALLOC)


# ---------------------------------------------------------------------------- per volume
class _ParentTree:
    """The parent's file tree of one volume, walked only when a deleted file needs its path."""

    def __init__(self, volume: Volume | None) -> None:
        self.volume = volume
        self._nodes: dict[int, _Node] | None = None

    def node(self, inode: int) -> _Node | None:
        if self.volume is None or self.volume.fs is None:
            return None
        if self._nodes is None:
            self._nodes = {node.inode: node for node, _ in _walk(self.volume)}
        return self._nodes.get(inode)


def _volume_changes(volume: Volume, changed: Ranges, parent_volume: Volume | None) -> VolumeChanges:
    result = VolumeChanges(volume, changed.total, len(changed))
    if volume.fs is None:
        result.error = volume.error or "no file system"
        result.unattributed = changed.total
        return result
    found = _Attribution(volume, changed)
    mft_file = found.files()
    if volume.fs_type == "NTFS" and mft_file is not None:
        found.mft_records(mft_file, _ParentTree(parent_volume))
    found.finish(result, parent_volume)
    return result


class _Attribution:
    """The files the changed ranges of one volume fall in, and how much of each part."""

    def __init__(self, volume: Volume, changed: Ranges) -> None:
        self.volume = volume
        self.changed = changed
        self.items: dict[int, ChangedItem] = {}  # by inode; -1 - n for an orphan MFT record n
        self.nodes: dict[int, _Node] = {}
        self.hits: list[tuple[int, int]] = []  # the changed ranges attributed

    def note(self, node: _Node, part: str, size: int) -> None:
        item = self.items.get(node.inode)
        if item is None:
            item = self.items[node.inode] = ChangedItem(node.path, node.kind,
                                                        metadata=node.metadata)
        item.what[part] = item.what.get(part, 0) + size

    def files(self) -> pytsk3.File | None:
        """Every file's stored attributes against the changed ranges; $MFT's file (NTFS)."""
        ntfs = self.volume.fs_type == "NTFS"
        mft_file = None
        for node, file in itertools.chain(_walk(self.volume), _extra_files(self.volume)):
            self.nodes[node.inode] = node
            is_mft = ntfs and node.inode == NTFS_MFT_INODE
            if is_mft:
                mft_file = file
            for attr in file:
                self._attribute(node, attr, is_mft)
        return mft_file

    def _attribute(self, node: _Node, attr: pytsk3.Attribute, is_mft: bool) -> None:
        if not int(attr.info.flags) & ATTR_NONRES:
            return
        attr_type = int(attr.info.type)
        if is_mft and attr_type == 0x80:
            return  # the records inside $MFT are mapped to their own files below
        name = attr.info.name.decode("utf-8", errors="replace") if attr.info.name else None
        block = self.volume.block_size
        for run in attr:
            if int(run.flags) & RUN_SKIP:
                continue
            start = int(run.addr) * block
            for lo, hi in self.changed.overlaps(start, start + int(run.len) * block):
                self.note(node, _part_name(self.volume, attr_type, name, node.kind == "dir"),
                          hi - lo)
                self.hits.append((lo, hi))

    def mft_records(self, mft_file: pytsk3.File, parent_tree: _ParentTree) -> None:
        """NTFS: $MFT's own runs, and each changed record given to its file."""
        block = self.volume.block_size
        for _mft_offset, vol_offset, length in _mft_runs(mft_file, block):
            for lo, hi in self.changed.overlaps(vol_offset, vol_offset + length):
                self.hits.append((lo, hi))
        for number, size in sorted(_changed_records(self.volume, mft_file, self.changed).items()):
            node = self.nodes.get(number)
            if node is not None:
                self.note(node, "MFT record", size)
            else:
                self._orphan_record(number, size, parent_tree)

    def _orphan_record(self, number: int, size: int, parent_tree: _ParentTree) -> None:
        """A changed MFT record no file of the volume has now."""
        in_use = _record_in_use(self.volume, number)
        status = "unlinked" if in_use else "deleted"
        parent_node = parent_tree.node(number) if not in_use else None
        if not in_use and parent_node is None:
            status = "freed"  # a record no file used before or after: just cleared
        path = parent_node.path if parent_node else f"<MFT record {number}>"
        kind = parent_node.kind if parent_node else "other"
        metadata = number < NTFS_FIRST_USER_RECORD or status == "freed"
        item = self.items.setdefault(-1 - number, ChangedItem(path, kind, status, metadata=metadata))
        item.what["MFT record"] = item.what.get("MFT record", 0) + size

    def finish(self, result: VolumeChanges, parent_volume: Volume | None) -> None:
        """Into `result`: what was not attributed; files new since the parent as added."""
        attributed = Ranges(self.hits)
        result.unattributed = self.changed.total - attributed.total
        parent_fs = parent_volume is not None and parent_volume.fs is not None
        for key, item in self.items.items():
            if key >= 0 and item.status == "modified" and not item.metadata and (
                    not parent_fs or resolve(parent_volume, item.path, follow_last=False) is None):
                item.status = "added"
            (result.metadata if item.metadata else result.items).append(item)
        result.items.sort(key=lambda i: i.path.casefold())
        result.metadata.sort(key=lambda i: i.path.casefold())


# ---------------------------------------------------------------------------- whole disk
def _outside_label(offset: int, volumes: DiskVolumes) -> str:
    if offset < SECTOR:
        return "partition table (MBR)" if volumes.table.scheme != "none" else "first sector"
    if volumes.table.scheme == "gpt" and offset < 34 * SECTOR:
        return "GPT header and partition entries"
    return "space outside every partition"


def parent_view(chain: Chain) -> Chain:
    """The disk as the parent shows it (the same layer objects, minus the top)."""
    return Chain(chain.layers[1:], chain.links[1:])


def find_changes(chain: Chain) -> Changes:
    """What the top layer of `chain` changes compared to its parent (see the module notes)."""
    parent = parent_view(chain)
    written = written_ranges(chain)
    differing, identical = differing_ranges(chain, parent, written)
    changed = Ranges(differing)
    result = Changes(chain.top.name, parent.top.name, sum(e - s for s, e in written), identical,
                     changed.total)
    if not len(changed):
        return result
    volumes = open_volumes(chain)
    parent_volumes = open_volumes(parent)
    covered: list[tuple[int, int]] = []
    for volume in volumes.volumes:
        inside = changed.clip(volume.start, volume.start + volume.length)
        if not len(inside):
            continue
        covered.append((volume.start, volume.start + volume.length))
        # a volume the parent does not have (or cannot read): everything on it is new
        parent_volume = next((v for v in parent_volumes.volumes if v.number == volume.number
                              and v.start == volume.start), None)
        result.volumes.append(_volume_changes(volume, inside, parent_volume))
    inside_volumes = Ranges(covered)
    for start, end in changed:
        pos = start
        for lo, hi in inside_volumes.overlaps(start, end):
            if pos < lo:
                result.outside.append({"what": _outside_label(pos, volumes), "offset": pos,
                                       "bytes": lo - pos})
            pos = hi
        if pos < end:
            result.outside.append({"what": _outside_label(pos, volumes), "offset": pos,
                                   "bytes": end - pos})
    return result
