"""The structure rules of a VHDX file, one copy for the reader and the checker.

`VhdxLayer` opens a file by these rules and refuses it at the first problem that makes it
unreadable (a `FormatError` naming the structure, the field and the fix); `vhdfs check`
(vhdfs.maintain.scan_vhdx) applies the same rules to a damaged file and turns every problem
into a finding. So what the reader refuses and what the checker reports cannot drift apart.

Each function answers with the structure it could read and the problems it found, as
`Problem`s: a stable code (the finding's), what is wrong and where (without the file name),
and the reader's fix text. A problem in a structure stops its parsing there: what comes
after it cannot be interpreted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from construct import ChecksumError as ConstructChecksumError
from construct import ConstructError

from vhdfs.vhdx import format as fmt

MiB = fmt.MiB
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Problem:
    code: str  # stable name of the kind of problem (check's finding code)
    what: str  # what is wrong and where, without the file name
    fix: str  # what to do about it, as the reader's error says


# ---------------------------------------------------------------- headers
@dataclass
class HeaderSlot:
    """What one of the two header positions holds."""

    number: int  # 1 or 2
    offset: int
    raw: bytes
    header: Any | None  # parsed and valid, else None
    problem: str = ""  # why it is not valid ("" when it is)


def read_header_slot(number: int, raw: bytes) -> HeaderSlot:
    offset = fmt.HEADER_OFFSETS[number - 1]
    try:
        header = fmt.HEADER.parse(raw).tail.value
    except ConstructChecksumError:
        return HeaderSlot(number, offset, raw, None,
                          f"header {number} at offset {offset} fails its CRC-32C check")
    except ConstructError:
        return HeaderSlot(number, offset, raw, None,
                          f"header {number} at offset {offset} has no 'head' signature")
    if header.version != 1:
        return HeaderSlot(number, offset, raw, None, f"header {number} at offset {offset} has "
                          f"version {header.version} (expected 1)")
    return HeaderSlot(number, offset, raw, header)


def read_header_slots(read_at: ReadAt) -> list[HeaderSlot]:
    return [read_header_slot(number, read_at(offset, fmt.HEADER_SIZE))
            for number, offset in enumerate(fmt.HEADER_OFFSETS, start=1)]


def current_slot(slots: list[HeaderSlot]) -> HeaderSlot | None:
    """The current header: the valid one with the higher sequence number (header 1 on a tie,
    as qemu and the reader choose)."""
    valid = [slot for slot in slots if slot.header is not None]
    if not valid:
        return None
    return max(valid, key=lambda slot: (slot.header.sequence_number, -slot.number))


def both_headers_damaged(slots: list[HeaderSlot]) -> Problem:
    return Problem("headers-damaged", "both VHDX headers are damaged (" +
                   "; ".join(slot.problem for slot in slots) + ")",
                   "the file cannot be read; restore it from a copy")


def log_version_problem(slot: HeaderSlot) -> Problem | None:
    if slot.header.log_version != 0:
        return Problem("header-log-version", f"header {slot.number}: log version "
                       f"{slot.header.log_version} is not supported (expected 0)", "")
    return None


def log_location_problem(header: Any, file_size: int) -> str:
    """Why the log a header names cannot carry writes ("" when it can)."""
    offset, length = header.log_offset, header.log_length
    if length < MiB or length % MiB:
        return "a log must be whole MiB and at least 1 MiB long to carry the metadata changes of a write"
    if offset % MiB or offset < fmt.HEADER_SECTION_SIZE:
        return "a log must start on a whole MiB past the first"
    if offset + length > file_size:
        return f"ends past the end of the file ({file_size} bytes)"
    return ""


# ---------------------------------------------------------------- region tables
@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int


@dataclass
class TableSlot:
    number: int
    offset: int
    raw: bytes
    table: Any | None
    problem: str = ""


def read_region_table_slot(number: int, raw: bytes) -> TableSlot:
    offset = fmt.REGION_TABLE_OFFSETS[number - 1]
    try:
        return TableSlot(number, offset, raw, fmt.REGION_TABLE.parse(raw).tail.value)
    except ConstructChecksumError:
        return TableSlot(number, offset, raw, None,
                         f"region table {number} at offset {offset} fails its CRC-32C check")
    except ConstructError:
        return TableSlot(number, offset, raw, None,
                         f"region table {number} at offset {offset} has no 'regi' signature")


def read_region_table_slots(read: ReadAt) -> list[TableSlot]:
    return [read_region_table_slot(number, read(offset, fmt.REGION_TABLE_SIZE))
            for number, offset in enumerate(fmt.REGION_TABLE_OFFSETS, start=1)]


def both_tables_damaged(slots: list[TableSlot]) -> Problem:
    return Problem("region-tables-damaged", "both region tables are damaged (" +
                   "; ".join(slot.problem for slot in slots) + ")",
                   "the file cannot be read; restore it from a copy")


REGION_NAMES = {fmt.BAT_REGION: "BAT region", fmt.METADATA_REGION: "metadata region"}


@dataclass
class Layout:
    """Where the regions are: by GUID, and every span (the log's too) sorted by start."""

    regions: dict[bytes, Region] = field(default_factory=dict)
    spans: list[Region] = field(default_factory=list)


def region_layout(table: Any, header: Any, data_size: int) -> tuple[Layout, Problem | None]:
    """The regions of a valid region table, checked against each other, the log and the file."""
    damaged = "the region table is damaged"
    if table.entry_count > fmt.MAX_REGION_ENTRIES:
        return Layout(), Problem("region-table-entries", f"region table: {table.entry_count} "
                                 f"entries (at most {fmt.MAX_REGION_ENTRIES})", damaged)
    layout = Layout()
    for index, entry in enumerate(table.entries):
        problem = _region_entry(index, entry, layout, data_size)
        if problem is not None:
            return layout, problem
    for guid, name in REGION_NAMES.items():
        if guid not in layout.regions:
            return layout, Problem("region-missing", f"region table: no {name}", damaged)
    spans = list(layout.regions.values())
    if header.log_length:
        spans.append(Region("log", header.log_offset, header.log_offset + header.log_length))
    spans.sort(key=lambda r: r.start)
    for previous, region in zip(spans, spans[1:], strict=False):
        if region.start < previous.end:
            return layout, Problem(
                "region-overlap", f"region table: the {region.name} [{region.start}, "
                f"{region.end}) overlaps the {previous.name} [{previous.start}, {previous.end})",
                damaged)
    layout.spans = spans
    return layout, None


def _region_entry(index: int, entry: Any, layout: Layout, data_size: int) -> Problem | None:
    """One entry of the region table, into `layout` when it is a region vhdfs knows."""
    damaged = "the region table is damaged"
    name = REGION_NAMES.get(entry.guid)
    where = f"region table entry {index} ({name or fmt.guid_text(entry.guid)})"
    if name is None:
        if entry.required & 1:
            return Problem("region-unknown", f"{where}: a required region vhdfs does "
                           "not know", "the image needs a newer VHDX reader")
        return None
    if entry.guid in layout.regions:
        return Problem("region-twice", f"{where}: listed twice", damaged)
    start, end = entry.file_offset, entry.file_offset + entry.length
    if start % MiB or entry.length % MiB or entry.length == 0 or start < fmt.HEADER_SECTION_SIZE:
        return Problem("region-bounds", f"{where}: offset {start}, length "
                       f"{entry.length}; both must be whole MiB, past the first MiB", damaged)
    if end > data_size:
        return Problem("region-bounds", f"{where}: ends at {end}, past the end of the "
                       f"file ({data_size} bytes)", "the file is truncated")
    layout.regions[entry.guid] = Region(name, start, end)
    return None


# ---------------------------------------------------------------- metadata
@dataclass
class MetadataEntry:
    """One row of the metadata table and the bytes of its item."""

    index: int
    item_id: bytes
    offset: int  # from the start of the metadata region
    length: int
    flags: int
    value: bytes


@dataclass
class Metadata:
    """The metadata region as read: every entry (unknown ones too), and the known facts."""

    region: Region
    raw: bytes  # the whole region
    entries: list[MetadataEntry] = field(default_factory=list)
    block_size: int = 0
    leave_blocks_allocated: bool = False
    has_parent: bool = False
    size: int = 0
    virtual_disk_id: bytes = b""
    logical_sector_size: int = 0
    physical_sector_size: int = 0
    locator_raw: bytes = b""

    def item(self, guid: bytes) -> MetadataEntry | None:
        return next((entry for entry in self.entries if entry.item_id == guid), None)

    @property
    def commit_mark(self) -> Any | None:
        """vhdfs's mark of an unfinished commit into the file (format.COMMIT_MARK), if any."""
        found = self.item(fmt.COMMIT_MARK_ITEM)
        if found is None or len(found.value) < fmt.COMMIT_MARK.sizeof():
            return None
        try:
            return fmt.COMMIT_MARK.parse(found.value)
        except ConstructError:
            return None


def parse_metadata(raw: bytes, region: Region) -> tuple[Metadata | None, Problem | None]:
    """The metadata table and the known items, checked as [MS-VHDX] 2.6 requires."""
    where = f"metadata region at offset {region.start}"
    try:
        head = fmt.METADATA_TABLE_HEADER.parse(raw)
    except ConstructError:
        return None, Problem("metadata-signature", f"{where}: no 'metadata' signature",
                             "the metadata region is damaged")
    if head.entry_count > fmt.MAX_METADATA_ENTRIES:
        return None, Problem("metadata-entries", f"{where}: {head.entry_count} entries (at most "
                             f"{fmt.MAX_METADATA_ENTRIES})", "the metadata region is damaged")
    meta = Metadata(region, raw)
    seen: set[bytes] = set()
    for index in range(head.entry_count):
        problem = _metadata_entry(index, meta, seen, where)
        if problem is not None:
            return None, problem
    problem = _known_items(meta, where)
    return (None, problem) if problem is not None else (meta, None)


def _metadata_entry(index: int, meta: Metadata, seen: set[bytes], where: str) -> Problem | None:
    """Row `index` of the metadata table, into `meta.entries` unless an optional item of
    another tool lies outside the item area (readers skip it)."""
    raw = meta.raw
    entry = fmt.METADATA_ENTRY.parse(raw[32 + 32 * index:64 + 32 * index])
    name = fmt.KNOWN_METADATA.get(entry.item_id)
    what = f"{where}, entry {index} ({name or fmt.guid_text(entry.item_id)})"
    if name is None:
        if entry.flags & fmt.META_IS_REQUIRED:
            return Problem("metadata-unknown", f"{what}: a required metadata item "
                           "vhdfs does not know", "the image needs a newer VHDX reader")
    elif entry.item_id in seen:
        return Problem("metadata-twice", f"{what}: listed twice", "the metadata is damaged")
    if entry.length and (entry.offset < fmt.METADATA_TABLE_SIZE
                         or entry.offset + entry.length > len(raw)):
        if name is None:
            return None  # an optional item of another tool: readers skip it
        return Problem("metadata-item-bounds", f"{what}: {entry.length} bytes at "
                       f"offset {entry.offset} lie outside the region's item area",
                       "the metadata is damaged")
    seen.add(entry.item_id)
    meta.entries.append(MetadataEntry(index, entry.item_id, entry.offset, entry.length,
                                      entry.flags, raw[entry.offset:entry.offset + entry.length]))
    return None


def _known_items(meta: Metadata, where: str) -> Problem | None:
    """The items every VHDX has (and a child's parent locator), into `meta`'s facts."""
    damaged = "the metadata is damaged"

    def item(guid: bytes, size: int) -> bytes | None:
        found = meta.item(guid)
        return found.value if found is not None and len(found.value) >= size else None

    missing = [fmt.KNOWN_METADATA[guid] for guid, size in (
        (fmt.FILE_PARAMETERS, 8), (fmt.VIRTUAL_DISK_SIZE, 8), (fmt.VIRTUAL_DISK_ID, 16),
        (fmt.LOGICAL_SECTOR_SIZE, 4), (fmt.PHYSICAL_SECTOR_SIZE, 4)) if item(guid, size) is None]
    if missing:
        return Problem("metadata-missing", f"{where}: the {missing[0]} item is missing or "
                       "short", damaged)
    params = fmt.FILE_PARAMETERS_ITEM.parse(item(fmt.FILE_PARAMETERS, 8))
    meta.block_size = params.block_size
    meta.leave_blocks_allocated = bool(params.flags & fmt.LEAVE_BLOCKS_ALLOCATED)
    meta.has_parent = bool(params.flags & fmt.HAS_PARENT)
    meta.size = int.from_bytes(item(fmt.VIRTUAL_DISK_SIZE, 8)[:8], "little")
    meta.virtual_disk_id = item(fmt.VIRTUAL_DISK_ID, 16)[:16]
    meta.logical_sector_size = int.from_bytes(item(fmt.LOGICAL_SECTOR_SIZE, 4)[:4], "little")
    meta.physical_sector_size = int.from_bytes(item(fmt.PHYSICAL_SECTOR_SIZE, 4)[:4], "little")
    bs = meta.block_size
    if bs < MiB or bs > 256 * MiB or bs & (bs - 1):
        return Problem("metadata-block-size", f"{where}: block size {bs}; expected a power "
                       "of two from 1 MiB to 256 MiB", damaged)
    for label, value in (("logical", meta.logical_sector_size),
                         ("physical", meta.physical_sector_size)):
        if value not in (512, 4096):
            return Problem("metadata-sector-size", f"{where}: {label} sector size {value}; "
                           "expected 512 or 4096", damaged)
    if meta.size == 0 or meta.size % meta.logical_sector_size or meta.size > fmt.MAX_VIRTUAL_SIZE:
        return Problem("metadata-disk-size", f"{where}: virtual disk size {meta.size}; "
                       f"expected a multiple of {meta.logical_sector_size} up to 64 TiB", damaged)
    if meta.has_parent:
        locator = item(fmt.PARENT_LOCATOR, 20)
        if locator is None:
            return Problem("metadata-missing", f"{where}: the parent locator item is "
                           "missing or short", damaged)
        meta.locator_raw = locator
    return None


# ---------------------------------------------------------------- the parent locator
LINKAGE_KEYS = ("parent_linkage", "parent_linkage2")
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")
LOCATOR_FIX = "vhdfs set-parent CHILD PARENT rewrites the locator"


@dataclass
class ParentLocator:
    values: dict[str, str] = field(default_factory=dict)  # key -> value, in file order
    ids: tuple[bytes, ...] = ()  # the GUIDs of parent_linkage, then parent_linkage2


def parse_parent_locator(raw: bytes, where: str) -> tuple[ParentLocator, Problem | None]:
    """The key/value entries of a VHDX parent locator item and the parent ids they name."""
    what = f"{where}: parent locator"
    damaged = "the metadata is damaged"
    found = ParentLocator()
    head = fmt.PARENT_LOCATOR_HEADER.parse(raw)
    if head.locator_type != fmt.VHDX_PARENT_LOCATOR_TYPE:
        return found, Problem("locator-type", f"{what}: type {fmt.guid_text(head.locator_type)} "
                              "is not the VHDX parent locator type", "vhdfs knows VHDX parents only")
    if 20 + 12 * head.key_value_count > len(raw):
        return found, Problem("locator-entries", f"{what}: {head.key_value_count} entries do not "
                              f"fit in its {len(raw)} bytes", damaged)
    for index in range(head.key_value_count):
        entry = fmt.PARENT_LOCATOR_ENTRY.parse(raw[20 + 12 * index:32 + 12 * index])
        texts = []
        for offset, length in ((entry.key_offset, entry.key_length),
                               (entry.value_offset, entry.value_length)):
            if offset + length > len(raw) or length % 2:
                return found, Problem("locator-entry-bounds", f"{what}, entry {index}: {length} "
                                      f"bytes at offset {offset} lie outside the locator", damaged)
            try:
                texts.append(raw[offset:offset + length].decode("utf-16-le"))
            except UnicodeDecodeError:
                return found, Problem("locator-text", f"{what}, entry {index}: not UTF-16 text",
                                      damaged)
        if texts[0] in found.values:
            return found, Problem("locator-duplicate-key", f"{what}, entry {index}: key "
                                  f"{texts[0]!r} is listed twice", "the metadata is damaged "
                                  "(which parent is meant is ambiguous); vhdfs set-parent "
                                  "rewrites the locator")
        found.values[texts[0]] = texts[1]
    if "parent_linkage" not in found.values:
        return found, Problem("locator-no-linkage", f"{what}: no parent_linkage entry", damaged)
    ids = []
    for key in LINKAGE_KEYS:
        if key in found.values:
            raw_id = fmt.parse_guid_text(found.values[key])
            if raw_id is None:
                return found, Problem("locator-linkage", f"{what}: {key} "
                                      f"{found.values[key]!r} is not a GUID", damaged)
            ids.append(raw_id)
    found.ids = tuple(ids)
    return found, None


def locator_advice(locator: ParentLocator, where: str) -> list[Problem]:
    """What readable locators get wrong that other readers trip over (warnings for check)."""
    out = []
    if not any(locator.values.get(key) for key in PATH_KEYS):
        out.append(Problem("locator-no-path", f"{where}: parent locator: no relative_path, "
                           "volume_path or absolute_win32_path entry; the parent is found only "
                           "with --parent or --search", LOCATOR_FIX))
    linkage = locator.values.get("parent_linkage", "")
    if linkage != linkage.lower():
        out.append(Problem("locator-linkage-case", f"{where}: parent locator: parent_linkage "
                           f"{linkage!r} is in upper case; the specification writes it in lower "
                           "case and libvhdi reads only that", LOCATOR_FIX))
    return out


# ---------------------------------------------------------------- the BAT
def bat_region_problem(region: Region, entries: int, size: int, block_size: int) -> Problem | None:
    if entries * 8 > region.end - region.start:
        return Problem("bat-region-size", f"BAT region at offset {region.start}: "
                       f"{region.end - region.start} bytes, but a disk of {size} bytes in "
                       f"{block_size}-byte blocks needs {entries} entries ({entries * 8} bytes)",
                       "the region table or the metadata is damaged")
    return None


def storage_problem(offset: int, length: int, data_size: int, spans: Sequence[Region]) -> str:
    """Why [offset, offset + length) cannot be a payload or sector bitmap block ("" if it can)."""
    if offset < fmt.HEADER_SECTION_SIZE:
        return "inside the header section (the first MiB)"
    if offset + length > data_size:
        return f"past the end of the file ({data_size} bytes)"
    for span in spans:
        if offset < span.end and span.start < offset + length:
            return f"inside the {span.name} [{span.start}, {span.end})"
    return ""


@dataclass
class BatVerdict:
    """Entries of the BAT that cannot be followed, and where the rest keeps its storage."""

    bad_blocks: dict[int, str] = field(default_factory=dict)  # payload block -> why
    bad_bitmaps: dict[int, str] = field(default_factory=dict)  # chunk -> why its bitmap entry is bad
    # (start, end, what, block): block >= 0 a payload block, -1 - chunk a sector bitmap
    stored: list[tuple[int, int, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class BatShape:
    size: int
    block_size: int
    ratio: int
    has_parent: bool
    data_size: int
    spans: tuple[Region, ...]

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size)

    @property
    def chunk_count(self) -> int:
        return -(-self.block_count // self.ratio)


def check_bat(bat: Any, shape: BatShape) -> BatVerdict:
    """Mark payload blocks whose BAT entry (or sector bitmap entry) cannot be followed: an
    undefined state, storage in the header section, a region or the log, past the end of
    the file or shared with another block; a partially present block without a parent or
    without its sector bitmap."""
    verdict = BatVerdict()
    for block in range(shape.block_count):
        _check_block(bat, shape, block, verdict)
    if shape.has_parent:
        for chunk in range(shape.chunk_count):
            _check_bitmap(bat, shape, chunk, verdict)
    _mark_shared(verdict)
    return verdict


def _check_block(bat: Any, shape: BatShape, block: int, verdict: BatVerdict) -> None:
    """One payload block's entry (and a partially present block's sector bitmap entry)."""
    ratio, bs, spans = shape.ratio, shape.block_size, shape.spans
    entry = bat[fmt.payload_index(block, ratio)]
    state, offset = entry & fmt.STATE_MASK, entry & fmt.OFFSET_MASK
    where = f"BAT entry {fmt.payload_index(block, ratio)} (block {block})"
    if state not in fmt.PAYLOAD_STATES:
        verdict.bad_blocks[block] = f"{where} has state {state}, which is undefined"
        return
    if state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT and not shape.has_parent:
        verdict.bad_blocks[block] = f"{where} is partially present in a file without a parent"
        return
    if state < fmt.PAYLOAD_BLOCK_FULLY_PRESENT:
        return
    length = min(bs, shape.size - block * bs)
    reason = storage_problem(offset, length, shape.data_size, spans)
    if reason:
        verdict.bad_blocks[block] = f"{where} points to file offset {offset}, {reason}"
        return
    verdict.stored.append((offset, offset + length, f"block {block}", block))
    if state == fmt.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
        sb_index = fmt.bitmap_index(block, ratio)
        sb = bat[sb_index]
        sb_offset = sb & fmt.OFFSET_MASK
        if sb & fmt.STATE_MASK != fmt.SB_BLOCK_PRESENT:
            verdict.bad_blocks[block] = (f"{where} is partially present but its sector "
                                         f"bitmap (BAT entry {sb_index}) is not")
        elif reason := storage_problem(sb_offset, fmt.SECTOR_BITMAP_BLOCK, shape.data_size,
                                       spans):
            verdict.bad_blocks[block] = (f"{where}: its sector bitmap (BAT entry {sb_index}) "
                                         f"points to file offset {sb_offset}, {reason}")


def _check_bitmap(bat: Any, shape: BatShape, chunk: int, verdict: BatVerdict) -> None:
    """A differencing file's sector bitmap entry of one chunk."""
    sb_index = fmt.bitmap_index(chunk * shape.ratio, shape.ratio)
    sb = bat[sb_index]
    state, start = sb & fmt.STATE_MASK, sb & fmt.OFFSET_MASK
    where = f"BAT entry {sb_index} (the sector bitmap of chunk {chunk})"
    if state == fmt.SB_BLOCK_PRESENT:
        if reason := storage_problem(start, fmt.SECTOR_BITMAP_BLOCK, shape.data_size,
                                     shape.spans):
            verdict.bad_bitmaps[chunk] = f"{where} points to file offset {start}, {reason}"
            return
        verdict.stored.append((start, start + fmt.SECTOR_BITMAP_BLOCK,
                               f"the sector bitmap of chunk {chunk}", -1 - chunk))
    elif state != fmt.SB_BLOCK_NOT_PRESENT:
        verdict.bad_bitmaps[chunk] = f"{where} has state {state}, which is undefined"


def _mark_shared(verdict: BatVerdict) -> None:
    """Storage two entries share: both are suspect."""
    verdict.stored.sort()
    previous: tuple[int, int, str, int] | None = None
    for item in verdict.stored:
        if previous is not None and item[0] < previous[1]:
            for one, other in ((item, previous), (previous, item)):
                reason = f"{one[2]} at file offset {one[0]} shares its storage with {other[2]}"
                if one[3] >= 0:
                    verdict.bad_blocks.setdefault(one[3], reason)
                else:  # a sector bitmap: only writing would go wrong (refused)
                    verdict.bad_bitmaps.setdefault(-1 - one[3], reason)
        if previous is None or item[1] > previous[1]:
            previous = item
