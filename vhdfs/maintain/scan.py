"""Structure checks of one VHD file, read directly with the structs of vhdfs.vhd.

`Layer` refuses files it cannot use; a check has to look at exactly those, so this module
parses the footer, its copy, the dynamic header, the BAT, the locators and the bitmaps
itself, and says for each problem what it is, where, and how (or whether) it can be mended
without guessing at data.
"""

from __future__ import annotations

import array
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vhdfs.errors import ChecksumError, FormatError, ImageIOError
from vhdfs.image import SECTOR
from vhdfs.maintain import repairs
from vhdfs.maintain.findings import (
    ERROR,
    NOTE,
    RANK_BAT,
    RANK_FOOTER,
    RANK_HEADER,
    RANK_LOCATOR,
    RANK_TRUNCATE,
    WARNING,
    CannotCheck,
    FileScan,
    Finding,
    Fix,
)
from vhdfs.maintain.journals import (
    PendingHeader,
    commit_state,
    describe_state,
    mark_area,
    pending_header,
    read_repair_journal,
    repair_journal_of,
    reserved_outside_mark,
    setparent_journal_of,
)
from vhdfs.sources.base import Source
from vhdfs.vhd import rules
from vhdfs.vhd.bitmap import bitmap_bytes, bitmap_runs
from vhdfs.vhd.dynheader import (
    HEADER_SIZE,
    HEADER_VERSION,
    NO_OFFSET,
    PLATFORM_MACX,
    PLATFORM_NONE,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    DynamicHeader,
    ParentLocator,
)
from vhdfs.vhd.footer import (
    COOKIE,
    FEATURES_RESERVED,
    FOOTER_SIZE,
    NO_DATA_OFFSET,
    VERSION_1_0,
    DiskType,
    Footer,
)
from vhdfs.vhd.rules import KNOWN_CODES, PATH_CODES, UNALLOCATED, Problem, footer_byte, header_byte
from vhdfs.vhd.timestamp import vhd_now, vhd_to_iso

URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# How far back from the end a fixed disk's footer is looked for behind trailing garbage.
FIXED_FOOTER_SEARCH = 1 << 30
SEARCH_CHUNK = 4 << 20
SPARE_ENTRIES_CHECKED = 1 << 16  # BAT entries past the disk's last block that are looked at
FUTURE_SLACK = 300  # seconds of clock difference tolerated before a timestamp is "future"
_FOOTER_FIELDS = ("features", "version", "data_offset", "timestamp", "creator_app",
                  "creator_version", "creator_os", "original_size", "current_size", "cylinders",
                  "heads", "sectors_per_track", "disk_type", "unique_id", "saved_state")


@dataclass
class FooterSlot:
    """What sits at one footer position."""

    offset: int
    raw: bytes
    footer: Footer | None  # parsed (even with a wrong checksum), None without the cookie
    checksum_ok: bool
    error: str  # what is wrong besides the checksum, "" when nothing
    checksum_error: str = ""

    @property
    def usable(self) -> bool:
        return self.footer is not None and self.checksum_ok and not self.error

    @property
    def fixable(self) -> bool:
        """Only the checksum is wrong: the fields make sense."""
        return self.footer is not None and not self.checksum_ok and not self.error

    @property
    def problem(self) -> str:
        return self.error or self.checksum_error or "unreadable"


def read_slot(source: Source, offset: int, data_end: int) -> FooterSlot:
    """The footer at `offset` of a file whose data area ends at `data_end` (where the
    trailing footer starts)."""
    raw = source.read_at(offset, FOOTER_SIZE)
    try:
        footer = Footer.parse(raw, source.name, offset)
        return FooterSlot(offset, raw, footer, True, footer_problem(footer, offset, data_end))
    except ChecksumError as exc:
        footer = Footer.parse(raw, source.name, offset, verify=False)
        problem = footer_problem(footer, offset, data_end)
        return FooterSlot(offset, raw, footer, False, problem, exc.what)
    except FormatError as exc:
        return FooterSlot(offset, raw, None, False, exc.what)


def footer_problem(footer: Footer, offset: int, data_end: int) -> str:
    """Fields that make a footer unusable (beyond its checksum): the reader's rules."""
    problem = rules.footer_problem(footer, offset, data_end)
    return problem.what if problem else ""


def differing_fields(a: Footer, b: Footer) -> list[str]:
    fields_a, fields_b = asdict(a), asdict(b)
    names = [name for name in _FOOTER_FIELDS if fields_a[name] != fields_b[name]]
    if reserved_outside_mark(a) != reserved_outside_mark(b):
        names.append("reserved")
    if mark_area(a) != mark_area(b):
        names.append("commit mark")
    return names


class Scanner:
    """One pass over one file. `scan()` returns a FileScan; it raises CannotCheck only when
    the file is not recognisable as a VHD at all."""

    def __init__(self, source: Source, *, size_rule: str = "auto", now: int | None = None,
                 bitmaps: bool = True) -> None:
        self.src = source
        self.read_bitmaps = bitmaps
        self.name = source.name
        self.rule = size_rule
        self.now = vhd_now() if now is None else now
        self.result = FileScan(path=source.name)
        self.regions: list[rules.Region] = []

    def add(self, code: str, severity: str, message: str, fix: Fix | None = None,
            hint: str = "") -> None:
        self.result.findings.append(Finding(code, severity, message, fix, hint))

    def fatal(self, code: str, message: str, hint: str = "") -> FileScan:
        self.add(code, ERROR, message, hint=hint or "not repairable without guessing; restore "
                 "the file from a backup or re-create it")
        self.result.fatal = True
        return self.result

    def broken(self, problem: Problem | None) -> bool:
        """A structure rule the reader would stop at (vhdfs.vhd.rules): a fatal finding, in
        the reader's words."""
        if problem is None:
            return False
        self.fatal(problem.code, problem.message(self.name))
        return True

    # ---------------------------------------------------------------- the whole file
    def scan(self) -> FileScan:
        try:
            return self._scan()
        except ImageIOError as exc:
            raise CannotCheck(f"{self.name}: reading failed: {exc}") from None

    def _scan(self) -> FileScan:
        size = self.src.size()
        self.result.file_size = size
        if size < FOOTER_SIZE:
            raise CannotCheck(f"{self.name}: the file is {size} bytes, too small to hold a "
                              "512-byte VHD footer; it is not a VHD image (or truncated to nothing)")
        self.size = size
        self.aligned = size - size % SECTOR
        footer, footer_at = self._choose_footer()
        self.footer = footer
        self.result.disk_type = footer.disk_type
        self.result.unique_id = footer.unique_id
        self._footer_fields(footer)
        if footer.disk_type == DiskType.FIXED:
            self._fixed(footer, footer_at)
        else:
            self._sparse(footer, footer_at)
        if not self.result.fatal:
            self._commit_state()
        return self.result

    def _choose_footer(self) -> tuple[Footer, int | None]:
        """The footer to go by, and where it is (None: the copy at offset 0 goes, and the
        trailing one is placed once the BAT is read); CannotCheck when none will do."""
        size = self.size
        data_end = self.aligned - FOOTER_SIZE  # where the trailing footer belongs
        trail = read_slot(self.src, data_end, data_end)
        copy = read_slot(self.src, 0, data_end) if data_end > 0 else None
        self.trail, self.copy = trail, copy
        sparse_copy = copy is not None and copy.footer is not None and \
            copy.footer.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING)

        footer_at: int | None
        if trail.usable:
            footer, footer_at = trail.footer, trail.offset
            if size != self.aligned:
                self._garbage(footer_at, "after the footer (the file size is not a multiple of 512)")
        elif copy is not None and copy.usable and sparse_copy:
            footer, footer_at = copy.footer, None  # the trailing footer is placed after the BAT is read
        elif found := self._search_fixed():
            footer_at, footer = found
            self._garbage(footer_at, "after the fixed disk's footer")
        elif trail.fixable:
            footer, footer_at = trail.footer, trail.offset
            fixed = footer.copy()
            where = [trail.offset] + ([0] if footer.disk_type != DiskType.FIXED else [])
            self.add("footer-checksum", ERROR, f"{self.name}: {trail.checksum_error}",
                     Fix(RANK_FOOTER, f"rewrite the footer at offset {trail.offset} with its "
                         "checksum recomputed" + (" (and its copy at 0)" if len(where) > 1 else ""),
                         repairs.write_footer(fixed.build(), where)))
            if size != self.aligned:
                self._garbage(footer_at, "after the footer")
        elif copy is not None and copy.fixable and sparse_copy:
            footer, footer_at = copy.footer, None
        else:
            reasons = f"at the end: {trail.problem}"
            if copy is not None:
                reasons += f"; at offset 0: {copy.problem}"
            raise CannotCheck(f"{self.name}: no usable VHD footer ({reasons}); not a VHD file, "
                              "or one whose footers are both destroyed")
        return footer, footer_at

    def _garbage(self, footer_at: int, what: str) -> None:
        extra = self.size - footer_at - FOOTER_SIZE
        self.add("trailing-garbage", ERROR, f"{self.name}: {extra} bytes {what} at offset "
                 f"{footer_at}", Fix(RANK_TRUNCATE, f"truncate the file to {footer_at + FOOTER_SIZE} "
                                     f"bytes (drop {extra} bytes after the footer)",
                                     repairs.truncate(footer_at + FOOTER_SIZE)))

    def _search_fixed(self) -> tuple[int, Footer] | None:
        """A fixed disk's footer followed by garbage: the last sector-aligned footer whose
        disk size says it belongs exactly where it is."""
        def fits(offset: int, footer: Footer) -> bool:
            return footer.disk_type == DiskType.FIXED and offset in (
                footer.current_size, footer.chs_size)
        low = max(0, self.aligned - FOOTER_SIZE - FIXED_FOOTER_SEARCH)
        return self.search_footer(low, self.aligned - 2 * FOOTER_SIZE, fits)

    def search_footer(self, low: int, high: int, accept: Callable[[int, Footer], bool]
                      ) -> tuple[int, Footer] | None:
        """The highest sector-aligned offset in [low, high] with a valid footer `accept`ed."""
        if high < low:
            return None
        end = high + FOOTER_SIZE
        while end > low:
            start = max(low, end - SEARCH_CHUNK)
            start -= start % SECTOR
            data = self.src.read_at(start, min(end + FOOTER_SIZE, self.size) - start)
            hits = [m.start() for m in re.finditer(re.escape(COOKIE), data)]
            for index in reversed(hits):
                offset = start + index
                if offset % SECTOR or offset > high or offset < low:
                    continue
                try:
                    footer = Footer.parse(data[index:index + FOOTER_SIZE], self.name, offset)
                except FormatError:
                    continue
                if accept(offset, footer):
                    return offset, footer
            end = start
        return None

    def _footer_fields(self, footer: Footer) -> None:
        if not footer.features & FEATURES_RESERVED:
            self.add("footer-features", WARNING, f"{self.name}: footer features (byte "
                     f"{footer_byte('features')}) are 0x{footer.features:08x}; bit 0x2 should "
                     "always be set")
        if footer.version != VERSION_1_0:
            self.add("footer-version", WARNING, f"{self.name}: footer version (byte "
                     f"{footer_byte('version')}) is 0x{footer.version:08x}; expected 0x00010000")
        if footer.timestamp > self.now + FUTURE_SLACK:
            self.add("footer-timestamp", WARNING, f"{self.name}: footer timestamp (byte "
                     f"{footer_byte('timestamp')}) is "
                     f"{vhd_to_iso(footer.timestamp)}, in the future (a wrong clock where it "
                     "was made); readers do not use it")

    # ---------------------------------------------------------------- fixed disks
    def _fixed(self, footer: Footer, footer_at: int) -> None:
        self.result.footer_offset = footer_at
        self.result.data_end = footer_at
        size = footer.virtual_size(self.rule)
        self.result.virtual_size = size
        if self.broken(rules.disk_size_problem(size)):
            return
        if footer.data_offset != NO_DATA_OFFSET:
            self.add("footer-data-offset", WARNING, f"{self.name}: fixed disk with data offset "
                     f"(byte {footer_byte('data_offset')}) {footer.data_offset}; expected all "
                     "ones (readers ignore it)")
        if self.broken(rules.fixed_size_problem(size, footer_at)):
            return
        if size < footer_at:
            self.add("fixed-extra-data", NOTE, f"{self.name}: {footer_at - size} bytes between "
                     f"the end of the disk ({size}) and the footer are not part of the disk")

    # ---------------------------------------------------------------- dynamic and differencing
    def _sparse(self, footer: Footer, footer_at: int | None) -> None:
        """A dynamic or differencing disk: header, BAT, locators, the footers, the blocks.
        `footer_at` is None when the trailing footer is to be placed (only its copy reads)."""
        limit = footer_at if footer_at is not None else self.aligned
        header = self._header(footer, 0 if footer_at is None else footer_at, limit)
        if header is None or not self._table(header, footer, limit):
            return
        self._locators(header, footer, limit)
        if footer_at is None:
            footer_at = self._place_trailing_footer(footer)
        self.result.footer_offset = footer_at
        if self.trail.usable:
            self._footer_copy(footer)
        self._blocks(footer_at)
        self._header_fields(header, footer)

    def _table(self, header: DynamicHeader, footer: Footer, limit: int) -> bool:
        """The disk's size, block size and BAT by the reader's rules, then the BAT itself;
        False (a fatal finding made) when the reader would stop."""
        self.header = header
        size = footer.virtual_size(self.rule)
        self.result.virtual_size = size
        if self.broken(rules.disk_size_problem(size)
                       or rules.header_problem(header, footer.data_offset, size, limit)):
            return False
        self.block_size = header.block_size
        self.bitmap_size = bitmap_bytes(header.block_size)
        self.bat_at = header.table_offset
        self.regions = rules.metadata_regions(header, footer.data_offset)
        self.size_v = size
        self.bat = self._read_bat(header, rules.needed_entries(size, header.block_size))
        return True

    def _read_bat(self, header: DynamicHeader, needed: int) -> array.array:
        """The entries the disk uses; (bounded) spare ones after them are looked at."""
        spare = min(header.max_table_entries - needed, SPARE_ENTRIES_CHECKED)
        bat = array.array("I", self.src.read_at(header.table_offset, (needed + spare) * 4))
        if sys.byteorder == "little":
            bat.byteswap()
        stray = sum(1 for entry in bat[needed:] if entry != UNALLOCATED)
        if stray:
            self.add("bat-spare-entries", WARNING, f"{self.name}: {stray} BAT entries past the "
                     f"last block ({needed}) are not 0xFFFFFFFF (readers ignore them)")
        return bat[:needed]

    def _header_fields(self, header: DynamicHeader, footer: Footer) -> None:
        """Header fields readers ignore: warnings only."""
        where = f"{self.name}: dynamic header at offset {footer.data_offset}"
        if header.parent_timestamp > self.now + FUTURE_SLACK and \
                footer.disk_type == DiskType.DIFFERENCING:
            self.add("parent-timestamp", WARNING, f"{where}: parent timestamp (byte "
                     f"{header_byte('parent_timestamp')}) is "
                     f"{vhd_to_iso(header.parent_timestamp)}, in the future (advisory only)")
        if header.data_offset != NO_OFFSET:
            self.add("header-data-offset", WARNING, f"{where}: data offset (byte "
                     f"{header_byte('data_offset')}) is {header.data_offset}; expected all ones "
                     "(readers ignore it)")
        if header.header_version != HEADER_VERSION:
            self.add("header-version", WARNING, f"{where}: header version (byte "
                     f"{header_byte('header_version')}) is 0x{header.header_version:08x}; "
                     "expected 0x00010000")

    def _header(self, footer: Footer, footer_at: int, limit: int) -> DynamicHeader | None:
        at = footer.data_offset
        if self.broken(rules.header_place_problem(footer, footer_at, limit)):
            return None
        raw = self.src.read_at(at, HEADER_SIZE)
        pending = pending_header(Path(self.name))  # set-parent's journal, if any
        try:
            header = DynamicHeader.parse(raw, self.name, at)
        except ChecksumError as exc:
            header = DynamicHeader.parse(raw, self.name, at, verify=False)
            if pending is None:
                self.add("header-checksum", ERROR, str(exc).split("; ")[0],
                         Fix(RANK_HEADER, f"rewrite the dynamic header at offset {at} with its "
                             "checksum recomputed", repairs.write_header(at, header.build())))
        except FormatError as exc:
            self.fatal("header-cookie", f"{exc.source}: {exc.what}")
            return None
        if pending is not None:
            self._pending_set_parent(pending, header, raw, at)
        return header

    def _pending_set_parent(self, pending: PendingHeader, header: DynamicHeader, raw: bytes,
                            at: int) -> None:
        journal = setparent_journal_of(Path(self.name))
        new = pending.new_header
        if raw == new:
            self.add("set-parent-journal", WARNING, f"{self.name}: a finished set-parent left "
                     f"its journal {journal}",
                     Fix(RANK_HEADER, "delete the set-parent journal",
                         repairs.remove_file(journal)))
            return
        try:
            parsed = DynamicHeader.parse(new, self.name, at)
            same_layout = (parsed.table_offset, parsed.block_size, parsed.max_table_entries) == (
                header.table_offset, header.block_size, header.max_table_entries)
        except FormatError:
            same_layout = False
        if not same_layout or pending.header_offset != at:
            self.add("set-parent-journal", WARNING, f"{self.name}: the set-parent journal "
                     f"{journal} does not belong to this header",
                     Fix(RANK_HEADER, "delete the stale set-parent journal",
                         repairs.remove_file(journal)))
            return
        self.add("set-parent-unfinished", ERROR, f"{self.name}: a set-parent was interrupted "
                 "before its new header was written (the header may be torn between old and new)",
                 Fix(RANK_HEADER, f"write the new header from {journal} at "
                     f"offset {at} and delete the journal",
                     repairs.write_header(at, new, journal)))

    def _locators(self, header: DynamicHeader, footer: Footer, limit: int) -> None:
        differencing = footer.disk_type == DiskType.DIFFERENCING
        for index, loc in enumerate(header.locators):
            what = f"{self.name}: {rules.locator_name(index, loc)}"
            if loc.platform_code == PLATFORM_NONE:
                if loc.data_length or loc.data_offset or loc.data_space:
                    self.add("locator-stray", NOTE, f"{what}: empty entry with data fields set")
            elif not differencing:
                self._unused_locator(what, index, loc, limit)
            elif loc.platform_code not in KNOWN_CODES:
                self.add("locator-code", WARNING, f"{what}: unknown platform code (ignored)")
            elif loc.data_length:
                self._locator(what, index, loc, footer, limit)

    def _unused_locator(self, what: str, index: int, loc: ParentLocator, limit: int) -> None:
        """A locator of a disk that is not differencing: ignored by readers, its room kept."""
        self.add("locator-on-dynamic", WARNING, f"{what}: a dynamic disk with a parent "
                 "locator (readers ignore it)")
        start, end = loc.data_offset, loc.data_offset + max(loc.space_bytes, loc.data_length)
        if loc.data_length and start % SECTOR == 0 and FOOTER_SIZE <= start and end <= limit:
            self.regions.append(rules.locator_region(index, loc, limit))  # kept

    def _locator(self, what: str, index: int, loc: ParentLocator, footer: Footer,
                 limit: int) -> None:
        """A differencing disk's locator with data: where it is, then what it says."""
        problem = rules.locator_problem(index, loc, limit, self.regions)
        if problem:
            severity = ERROR if loc.platform_code in PATH_CODES else WARNING
            self.add(problem.code, severity, problem.message(self.name),
                     Fix(RANK_LOCATOR, f"clear parent locator {index} ({loc.code_text}); "
                         "vhdfs set-parent writes fresh locators",
                         repairs.clear_locator(footer.data_offset, index))
                     if severity == ERROR else None)
            return
        self.regions.append(rules.locator_region(index, loc, limit))
        if loc.platform_code in (PLATFORM_W2RU, PLATFORM_W2KU) and loc.data_length % 2:
            self.add("locator-text", WARNING, f"{what}: UTF-16 path of odd length "
                     f"{loc.data_length}")
        elif loc.platform_code in PATH_CODES:
            self._locator_text(what, loc, index, footer)

    def _locator_text(self, what: str, loc: ParentLocator, index: int, footer: Footer) -> None:
        """A locator's data must hold a path (or URL) a reader can use: not zeros (a writer
        that flushed stale metadata over it), and text in the locator's own encoding."""
        data = self.src.read_at(loc.data_offset, loc.data_length)
        text = data.rstrip(b"\0")
        if loc.platform_code in (PLATFORM_W2RU, PLATFORM_W2KU) and len(text) % 2:
            text += b"\0"  # the high byte of a last UTF-16 character below 256
        problem, code = "", "locator-undecodable"
        if not text:
            problem, code = f"its {loc.data_length} bytes of data at offset {loc.data_offset} " \
                "are all zeros (no path)", "locator-zeroed"
        elif loc.platform_code in (PLATFORM_W2RU, PLATFORM_W2KU):
            try:
                decoded = text.decode("utf-16-le")
            except UnicodeDecodeError as exc:
                problem = f"the data at offset {loc.data_offset} is not UTF-16 text (byte " \
                    f"{exc.start}: {exc.reason})"
            else:
                if CONTROL.search(decoded):
                    problem = f"the UTF-16 path at offset {loc.data_offset} holds NUL or control " \
                        "characters (damaged or overwritten)"
        elif loc.platform_code == PLATFORM_MACX:
            try:
                decoded = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"the data at offset {loc.data_offset} is not UTF-8 text (byte " \
                    f"{exc.start}: {exc.reason})"
            else:
                if not URL_START.match(decoded) or CONTROL.search(decoded):
                    problem = f"the data at offset {loc.data_offset} is not a URL " \
                        "(expected file://... or a blob URL)"
        if problem:
            self.add(code, ERROR, f"{what}: {problem}; readers cannot follow it",
                     Fix(RANK_LOCATOR, f"clear parent locator {index} ({loc.code_text}); vhdfs "
                         "set-parent writes fresh locators",
                         repairs.clear_locator(footer.data_offset, index)),
                     hint="vhdfs set-parent CHILD PARENT rewrites every locator")

    def _place_trailing_footer(self, footer: Footer) -> int:
        """The trailing footer is unusable but the copy at offset 0 is: where does it go?"""
        last_sector = self.aligned - FOOTER_SIZE
        ends = [r.end for r in self.regions]
        covered = any(r.start <= last_sector < r.end for r in self.regions)
        for index, entry in enumerate(self.bat):
            if entry != UNALLOCATED:
                start = entry * SECTOR
                end = start + self.bitmap_size + self._block_len(index)
                if end <= self.aligned:
                    ends.append(end)
                covered = covered or start <= last_sector < end
        low = max(ends)

        def same_disk(offset: int, candidate: Footer) -> bool:
            return candidate.unique_id == footer.unique_id and candidate.disk_type == footer.disk_type

        found = self.search_footer(low, last_sector, same_disk)
        if found is not None:
            offset, _ = found
            self._garbage(offset, "after the footer")
            return offset
        restore = footer.build() if not self.copy.usable else self.copy.raw
        where = [0] if not self.copy.usable else []
        if self.size == self.aligned and not covered and last_sector >= low:
            self.add("footer-damaged", ERROR, f"{self.name}: the trailing footer at offset "
                     f"{last_sector} is damaged ({self.trail.problem})",
                     Fix(RANK_FOOTER, f"restore the trailing footer at offset {last_sector} from "
                         "the copy at offset 0", repairs.write_footer(restore, [last_sector] + where)))
            return last_sector
        at = rules.round_up(self.size)
        self.add("footer-missing", ERROR, f"{self.name}: the file ends at {self.size} bytes without "
                 "a trailing footer, inside the data of its blocks or metadata: it looks truncated",
                 Fix(RANK_FOOTER, f"write the footer (from the copy at offset 0) at offset {at}, "
                     "the end of the file", repairs.write_footer(restore, [at] + where)))
        return at

    def _footer_copy(self, footer: Footer) -> None:
        copy = self.copy
        if copy.raw == self.trail.raw:
            return
        if copy.usable:
            names = differing_fields(copy.footer, footer)
            code = "footer-copy-mark" if names == ["commit mark"] else "footer-copy-differs"
            message = (f"{self.name}: the footer copy at offset 0 differs from the trailing footer "
                       f"in: {', '.join(names) or 'checksum'}")
        else:
            code = "footer-copy-damaged"
            message = f"{self.name}: the footer copy at offset 0 is damaged ({copy.problem})"
        self.add(code, ERROR, message,
                 Fix(RANK_FOOTER, "copy the trailing footer to offset 0",
                     repairs.write_footer(self.trail.raw, [0])))

    def _block_len(self, index: int) -> int:
        return min(self.block_size, self.size_v - index * self.block_size)

    def _blocks(self, footer_at: int) -> None:
        differencing = self.footer.disk_type == DiskType.DIFFERENCING
        below = "from the parent" if differencing else "as zeros"
        bad = rules.bad_blocks(self.bat, self.block_size, self.bitmap_size, self.size_v,
                               footer_at, self.regions)
        pending = self._pending_drops()
        good = sorted((entry * SECTOR, entry * SECTOR + self.bitmap_size + self._block_len(index),
                       index) for index, entry in enumerate(self.bat)
                      if entry != UNALLOCATED and index not in bad and index not in pending)
        drop = repairs.drop_bat_entries(self.name, self.bat_at, {i: self.bat[i] for i in bad})
        for index in sorted(bad):
            if index in pending:
                continue
            first = index * self.block_size
            last = first + self._block_len(index) - 1
            self.add("bat-bad-entry", ERROR, f"{self.name}: {bad[index]}",
                     Fix(RANK_BAT, f"drop BAT entry {index}: block {index} (disk bytes {first}-{last}) "
                         f"then reads {below}", drop, group="drop-bat"))
        ends = [r.end for r in self.regions] + [end for _, end, _ in good]
        self.result.data_end = max(ends)
        if footer_at > self.result.data_end:
            self.add("unused-tail", NOTE, f"{self.name}: {footer_at - self.result.data_end} bytes "
                     f"before the footer (from offset {self.result.data_end}) belong to no block "
                     "(an interrupted allocation, or a gap as Windows leaves; harmless)")
        if differencing and self.read_bitmaps:
            self._bitmaps(good)

    def _pending_drops(self) -> dict[int, int]:
        """BAT entries a killed repair had set out to drop (see repairs.drop_bat_entries)."""
        journal = read_repair_journal(self.name)
        if journal is None:
            return {}
        path = repair_journal_of(self.name)
        bat_at, entries = journal
        pending = {i: v for i, v in entries.items()
                   if bat_at == self.bat_at and i < len(self.bat) and self.bat[i] == v}
        if not pending:
            self.add("repair-journal", WARNING, f"{self.name}: a finished repair left its journal "
                     f"{path}", Fix(RANK_BAT - 1, f"delete {path}", repairs.remove_file(path)))
            return {}
        shown = ", ".join(map(str, sorted(pending)))
        below = "from the parent" if self.footer.disk_type == DiskType.DIFFERENCING else "as zeros"
        self.add("repair-unfinished", ERROR, f"{self.name}: an interrupted repair had begun to drop "
                 f"BAT entries {shown}",
                 Fix(RANK_BAT - 1, f"finish dropping BAT entries {shown} (their blocks then read "
                     f"{below})", repairs.drop_bat_entries(self.name, self.bat_at, pending)))
        return pending

    def _bitmaps(self, blocks: list[tuple[int, int, int]]) -> None:
        sectors_per_block = self.block_size // SECTOR
        empty = []
        for start, _, index in blocks:
            bitmap = self.src.read_at(start, self.bitmap_size)
            used = -(-self._block_len(index) // SECTOR)
            whole, rest = divmod(used, 8)
            marked = any(bitmap[:whole]) or bool(rest and bitmap[whole] >> (8 - rest))
            if not marked:
                empty.append(index)
            if used < sectors_per_block:
                tail = bitmap_runs(bitmap, used, sectors_per_block - used)
                if any(is_set for _, _, is_set in tail):
                    self.add("bitmap-past-end", WARNING, f"{self.name}: the bitmap of block "
                             f"{index} marks sectors past the end of the disk (ignored)")
        if empty:
            shown = ", ".join(map(str, empty[:8])) + (" ..." if len(empty) > 8 else "")
            self.add("bitmap-empty", NOTE, f"{self.name}: {len(empty)} allocated block(s) mark "
                     f"no sector in their bitmap (space without data): {shown}")

    # ---------------------------------------------------------------- unfinished jobs
    def _commit_state(self) -> None:
        state = commit_state(self.name, self.footer.commit_mark)
        if state is None:
            return
        self.result.commit_state = state
        # How to finish it is the commit's own business: vhdfs check attaches that repair
        # (vhdfs.maintain.commit.unfinished_commit_fix) to this finding.
        self.add("mid-commit", ERROR, describe_state(self.name, state), hint=state["finish"])


def scan_file(source: Source, *, size_rule: str = "auto", now: int | None = None,
              bitmaps: bool = True) -> FileScan:
    return Scanner(source, size_rule=size_rule, now=now, bitmaps=bitmaps).scan()


__all__ = ["scan_file", "Scanner", "FooterSlot", "read_slot"]
