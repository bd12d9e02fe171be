"""Malformed and hostile VHD images: one case per kind, each with the outcome it must produce.

Every image is built from a valid one made by `vhdfs.create` and then damaged by patching
bytes (recomputing the checksum where the case needs a valid one). Nothing is checked in as a
binary: tests/hostile builds each case in a temporary folder.

A case declares three outcomes:
  info   what `vhdfs info IMAGE` must do (an error class and exit code, or success with
         warnings), and the words its one-line message must contain (file, field, offset);
  read   what `vhdfs convert IMAGE OUT --to raw` must do (a full read), when it differs;
  write  what opening the image writable must do (open_chain(writable=True)).

    python -m tools.hostile OUTDIR          write the corpus and OUTDIR/manifest.json
    python -m tools.hostile OUTDIR --check  ... and run `vhdfs info` on every case
    python -m tools.hostile --table         the case table of docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.create import ParentInfo, create_differencing, create_dynamic, create_fixed
from vhdfs.errors import (
    ChainCycle,
    ChainTooDeep,
    ChecksumError,
    FormatError,
    ParentMismatch,
    ParentNotFound,
    VhdfsError,
)
from vhdfs.format.checksum import ones_complement_sum
from vhdfs.format.dynheader import (
    HEADER_SIZE,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    DynamicHeader,
    ParentLocator,
)
from vhdfs.format.footer import FOOTER_SIZE, Footer
from vhdfs.resolve import MAX_CHAIN_DEPTH
from vhdfs.sources.local import NotARegularFile

KIB = 1024
MIB = 1024 * 1024
DISK_SIZE = 4 * MIB
BLOCK_SIZE = 512 * KIB
# Header field offsets (relative to the dynamic header) and footer field offsets.
FOOTER_CHECKSUM_AT = 64
FOOTER_DISK_TYPE_AT = 60
HEADER_CHECKSUM_AT = 36
LOCATOR_TABLE_AT = 576


# ------------------------------------------------------------------ valid images
def pattern(offset: int, length: int, seed: int = 1) -> bytes:
    """Recognisable non-zero bytes: each 512-byte sector carries its disk offset and a seed."""
    out = bytearray()
    for sector in range(offset // 512, (offset + length) // 512):
        out += (f"s{seed}:{sector:08d}|".encode() * 52)[:512]
    return bytes(out)


def write_data(path: Path, writes: list[tuple[int, int]], seed: int = 1) -> None:
    """Write pattern() sectors at (offset, length) into the image, through the layer code."""
    from vhdfs.resolve import open_chain

    with open_chain(str(path), writable=True) as chain:
        for offset, length in writes:
            chain.write(offset, pattern(offset, length, seed))
        chain.flush()


def make_dynamic(path: Path, size: int = DISK_SIZE, block_size: int = BLOCK_SIZE,
                 writes: tuple[tuple[int, int], ...] | None = None) -> Path:
    create_dynamic(path, size, block_size)
    writes = DEFAULT_WRITES if writes is None else writes
    if writes:
        write_data(path, list(writes))
    return path


def make_fixed(path: Path, size: int = DISK_SIZE) -> Path:
    create_fixed(path, size)
    return path


def parent_info(path: Path) -> ParentInfo:
    footer = read_footer(path)
    header = read_header(path) if footer.disk_type != 2 else None
    return ParentInfo(path=path.resolve(), unique_id=footer.unique_id, size=footer.current_size,
                      timestamp=0, block_size=header.block_size if header else 0)


def make_child(path: Path, parent: Path, writes: tuple[tuple[int, int], ...] = ((1024, 1536),),
               seed: int = 2) -> Path:
    create_differencing(path, parent_info(parent))
    if writes:
        write_data(path, list(writes), seed)
    return path


# ------------------------------------------------------------------ byte patching
def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def footer_offset(path: Path) -> int:
    return path.stat().st_size - FOOTER_SIZE


def read_footer(path: Path) -> Footer:
    return Footer.parse(read_at(path, footer_offset(path), FOOTER_SIZE), str(path), 0, verify=False)


def header_offset(path: Path) -> int:
    return read_footer(path).data_offset


def read_header(path: Path) -> DynamicHeader:
    return DynamicHeader.parse(read_at(path, header_offset(path), HEADER_SIZE), str(path), 0,
                               verify=False)


def with_checksum(raw: bytes, checksum_at: int) -> bytes:
    """`raw` with its checksum field recomputed (the field itself counted as zeros)."""
    blank = raw[:checksum_at] + bytes(4) + raw[checksum_at + 4:]
    return blank[:checksum_at] + ones_complement_sum(blank).to_bytes(4, "big") + blank[checksum_at + 4:]


def patch_footer(path: Path, at: int, value: bytes, *, copy: bool = True, fix_checksum: bool = True,
                 trailing: bool = True) -> None:
    """Patch footer bytes [at, at+len(value)) in the trailing footer and (for sparse disks)
    the copy at offset 0, recomputing the checksum unless told not to."""
    places = [footer_offset(path)] if trailing else []
    if copy and read_footer(path).disk_type != 2:
        places.append(0)
    for place in places:
        raw = bytearray(read_at(path, place, FOOTER_SIZE))
        raw[at:at + len(value)] = value
        patch(path, place, with_checksum(bytes(raw), FOOTER_CHECKSUM_AT) if fix_checksum else bytes(raw))


def patch_header(path: Path, at: int, value: bytes, *, fix_checksum: bool = True) -> None:
    start = header_offset(path)
    raw = bytearray(read_at(path, start, HEADER_SIZE))
    raw[at:at + len(value)] = value
    patch(path, start, with_checksum(bytes(raw), HEADER_CHECKSUM_AT) if fix_checksum else bytes(raw))


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def bat_entries(path: Path) -> list[int]:
    header = read_header(path)
    raw = read_at(path, header.table_offset, header.max_table_entries * 4)
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]


def set_bat_entry(path: Path, index: int, value: int) -> None:
    patch(path, read_header(path).table_offset + 4 * index, u32(value))


def relink(child: Path, *, parent_id: bytes | None = None, locators: list[tuple[bytes, bytes]] | None = None,
           parent_name: str | None = None) -> None:
    """Rewrite a differencing child's parent id, locators (code, raw data) and parent name.

    Locator data goes into the space the existing locators reserve (create gives each at
    least 1 KiB); unused locator entries are cleared.
    """
    header = read_header(child)
    changes: dict[str, object] = {}
    if parent_id is not None:
        changes["parent_unique_id"] = parent_id
    if parent_name is not None:
        # surrogatepass: hostile cases store unpaired surrogates, which no encoder accepts.
        changes["parent_name_raw"] = parent_name.encode("utf-16-be", errors="surrogatepass").ljust(512, b"\0")
    if locators is not None:
        slots = [loc for loc in header.locators if loc.data_offset]
        new = [ParentLocator() for _ in header.locators]
        for index, (code, data) in enumerate(locators):
            slot = slots[index]
            if len(data) > slot.space_bytes:
                raise ValueError(f"locator text of {len(data)} bytes does not fit {slot.space_bytes}")
            patch(child, slot.data_offset, data.ljust(slot.space_bytes, b"\0"))
            new[index] = ParentLocator(code, slot.data_space, len(data), slot.data_offset)
        changes["locators"] = new
    patch(child, header_offset(child), header.copy(**changes).build())


def w2ru(text: str) -> tuple[bytes, bytes]:
    return PLATFORM_W2RU, text.encode("utf-16-le", errors="surrogatepass")


def w2ku(text: str) -> tuple[bytes, bytes]:
    return PLATFORM_W2KU, text.encode("utf-16-le", errors="surrogatepass")


def macx(text: str) -> tuple[bytes, bytes]:
    return PLATFORM_MACX, text.encode("utf-8", errors="surrogatepass")


def set_unique_id(path: Path, unique_id: bytes) -> None:
    patch_footer(path, 68, unique_id)


# ------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Outcome:
    """What one operation on a case must do."""

    error: type[VhdfsError] | None = None  # None: succeeds
    exit_code: int = 0
    mentions: tuple[str, ...] = ()  # words the error line (or a warning line) must contain
    warnings: tuple[str, ...] = ()  # words the `vhdfs: warning:` lines must contain
    warning_lines: int = 0  # how many warning lines (an error line may follow them)

    @property
    def ok(self) -> bool:
        return self.error is None


OK = Outcome()


def fails(error: type[VhdfsError], *mentions: str) -> Outcome:
    return Outcome(error, error.exit_code, tuple(mentions))


def warns(*warnings: str, lines: int = 1) -> Outcome:
    return Outcome(None, 0, (), tuple(warnings), lines)


@dataclass(frozen=True)
class Built:
    image: Path  # what `vhdfs info` is given
    args: tuple[str, ...] = ()  # extra command-line options (--parent ...)
    watch: tuple[Path, ...] = ()  # paths that must never be opened
    mentions: tuple[str, ...] = ()  # words known only once built (a computed checksum)
    expect: tuple[tuple[int, bytes], ...] = ()  # (disk offset, bytes) a successful read must show


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    summary: str  # what is wrong and what must happen, for docs/reliability.md
    build: Callable[[Path], Built]
    info: Outcome
    read: Outcome | None = None  # `convert --to raw`; None: same as info
    write: Outcome | None = None  # open_chain(writable=True); None: same as info
    needs_root: bool = False
    tags: tuple[str, ...] = field(default=())

    @property
    def read_outcome(self) -> Outcome:
        return self.read if self.read is not None else self.info

    @property
    def write_outcome(self) -> Outcome:
        return self.write if self.write is not None else self.info


CASES: list[Case] = []


def case(name: str, group: str, summary: str, info: Outcome, *, read: Outcome | None = None,
         write: Outcome | None = None, needs_root: bool = False) -> Callable:
    def register(build: Callable[[Path], Built | Path]) -> Callable:
        def run(folder: Path) -> Built:
            out = build(folder)
            return out if isinstance(out, Built) else Built(out)
        CASES.append(Case(name, group, summary, run, info, read, write, needs_root))
        return build
    return register


DEFAULT_WRITES = ((0, 64 * KIB), (2 * BLOCK_SIZE, 4096))
DYN_EXPECT = tuple((offset, pattern(offset, length)) for offset, length in DEFAULT_WRITES) + (
    (64 * KIB, bytes(4096)),)


def _dyn(folder: Path, name: str = "disk.vhd") -> Path:
    return make_dynamic(folder / name)


def _chain(folder: Path) -> tuple[Path, Path]:
    """base.vhd (dynamic, with data) and child.vhd (differencing, with partial sectors)."""
    base = make_dynamic(folder / "base.vhd")
    return base, make_child(folder / "child.vhd", base)


# ---- whole files
@case("file-empty", "file", "an empty file: not a VHD", fails(FormatError, "empty"))
def _file_empty(folder: Path) -> Path:
    path = folder / "empty.vhd"
    path.write_bytes(b"")
    return path


@case("file-tiny", "file", "a file of 100 bytes, smaller than a footer",
      fails(FormatError, "100 bytes", "512-byte"))
def _file_tiny(folder: Path) -> Path:
    path = folder / "tiny.vhd"
    path.write_bytes(b"conectix" + bytes(92))
    return path


@case("file-odd-size", "file", "a valid image with 100 trailing bytes: size not a multiple of 512",
      fails(FormatError, "not a multiple of 512"))
def _file_odd(folder: Path) -> Path:
    path = _dyn(folder)
    with open(path, "ab") as handle:
        handle.write(bytes(100))
    return path


@case("image-is-fifo", "file", "the image named on the command line is a FIFO: refused without "
      "blocking", fails(NotARegularFile, "a FIFO"))
def _image_fifo(folder: Path) -> Path:
    path = folder / "fifo.vhd"
    os.mkfifo(path)
    return path


@case("image-is-directory", "file", "the image named on the command line is a directory",
      fails(NotARegularFile, "directory"))
def _image_dir(folder: Path) -> Path:
    path = folder / "dir.vhd"
    path.mkdir()
    return path


# ---- footer
@case("footer-bad-cookie-fixed", "footer", "fixed disk whose footer cookie is not `conectix`",
      fails(FormatError, "cookie", "offset 4194304"))
def _cookie_fixed(folder: Path) -> Path:
    path = make_fixed(folder / "fixed.vhd")
    patch(path, footer_offset(path), b"CONECTIX")
    return path


@case("footer-bad-cookie-both", "footer", "dynamic disk whose trailing footer and footer copy "
      "both have a bad cookie", fails(FormatError, "cookie", "footer at offset"))
def _cookie_both(folder: Path) -> Path:
    path = _dyn(folder)
    patch(path, footer_offset(path), b"CONECTIX")
    patch(path, 0, b"CONECTIX")
    return path


@case("footer-bad-cookie-trailing", "footer", "dynamic disk whose trailing footer is damaged: "
      "read-only use goes on with the copy at offset 0 (warning); writing is refused",
      warns("cookie", "footer copy at offset 0"),
      write=fails(FormatError, "cookie"))
def _cookie_trailing(folder: Path) -> Built:
    path = _dyn(folder)
    patch(path, footer_offset(path), b"CONECTIX")
    return Built(path, expect=DYN_EXPECT)


def _bad_checksum(path: Path, checksum_at: int, start: int, copy_too: bool) -> Built:
    """Store checksum+1 (in the footer copy too, so that only the checksum is wrong). The
    message must give both values."""
    right = int.from_bytes(read_at(path, start + checksum_at, 4), "big")
    wrong = (right + 1) & 0xFFFFFFFF
    patch(path, start + checksum_at, u32(wrong))
    if copy_too:
        patch(path, checksum_at, u32(wrong))
    return Built(path, mentions=(f"is 0x{wrong:08x}, contents say 0x{right:08x}",), expect=DYN_EXPECT)


@case("footer-bad-checksum", "footer", "footer checksum mismatch (both copies): a warning for "
      "reading, an error for writing",
      warns("checksum", "byte 64", "footer at offset"), write=fails(ChecksumError, "checksum", "byte 64"))
def _footer_checksum(folder: Path) -> Built:
    path = _dyn(folder)
    return _bad_checksum(path, FOOTER_CHECKSUM_AT, footer_offset(path), True)


@case("footer-bad-checksum-fixed", "footer", "fixed disk footer checksum mismatch: warning for "
      "reading, error for writing",
      warns("checksum", "byte 64", "offset 4194304"), write=fails(ChecksumError, "checksum", "byte 64"))
def _footer_checksum_fixed(folder: Path) -> Built:
    path = make_fixed(folder / "fixed.vhd")
    write_data(path, [(0, 64 * KIB), (2 * BLOCK_SIZE, 4096)])
    return _bad_checksum(path, FOOTER_CHECKSUM_AT, footer_offset(path), False)


@case("footer-copy-differs", "footer", "the footer copy at offset 0 differs from the trailing "
      "footer (both valid): a warning for reading, an error for writing",
      warns("footer copy at offset 0 differs"), write=fails(ChecksumError, "differs"))
def _footer_copy(folder: Path) -> Built:
    path = _dyn(folder)
    raw = bytearray(read_at(path, 0, FOOTER_SIZE))
    raw[24:28] = u32(0x11223344)  # timestamp
    patch(path, 0, with_checksum(bytes(raw), FOOTER_CHECKSUM_AT))
    return Built(path, expect=DYN_EXPECT)


for _type in (0, 1, 5):
    @case(f"disk-type-{_type}", "footer", f"disk type {_type} (only 2, 3, 4 exist)",
          fails(FormatError, "disk type", "byte 60", f"is {_type}"))
    def _disk_type(folder: Path, _type: int = _type) -> Path:
        path = _dyn(folder)
        patch_footer(path, FOOTER_DISK_TYPE_AT, u32(_type))
        return path


@case("data-offset-past-end", "footer", "footer data offset (the header's place) beyond the file",
      fails(FormatError, "data offset", "byte 16"))
def _data_offset(folder: Path) -> Path:
    path = _dyn(folder)
    patch_footer(path, 16, u64(1 << 40))
    return path


@case("fixed-size-past-end", "footer", "fixed disk whose current size is larger than its data",
      fails(FormatError, "truncated"))
def _fixed_size(folder: Path) -> Path:
    path = make_fixed(folder / "fixed.vhd")
    patch_footer(path, 48, u64(8 * MIB))
    return path


# ---- dynamic header
@case("header-bad-cookie", "header", "dynamic header cookie is not `cxsparse`",
      fails(FormatError, "cookie", "cxsparse", "offset 512"))
def _header_cookie(folder: Path) -> Path:
    path = _dyn(folder)
    patch(path, 512, b"CXSPARSE")
    return path


@case("header-bad-checksum", "header", "dynamic header checksum mismatch: a warning for reading, "
      "an error for writing",
      warns("checksum", "byte 36", "offset 512"), write=fails(ChecksumError, "checksum", "byte 36"))
def _header_checksum(folder: Path) -> Built:
    path = _dyn(folder)
    return _bad_checksum(path, HEADER_CHECKSUM_AT, header_offset(path), False)


for _label, _bs in (("0", 0), ("1536", 1536), ("not-power-of-two", 3 * MIB), ("huge", 1 << 31)):
    @case(f"block-size-{_label}", "header", f"block size {_bs}",
          fails(FormatError, "block size", "byte 32", f"is {_bs}"))
    def _block_size(folder: Path, _bs: int = _bs) -> Path:
        path = _dyn(folder)
        patch_header(path, 32, u32(_bs))
        return path


@case("max-entries-0", "header", "max table entries 0", fails(FormatError, "max table entries", "is 0"))
def _entries_0(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 28, u32(0))
    return path


@case("max-entries-too-few", "header", "max table entries smaller than the disk needs",
      fails(FormatError, "max table entries", "is 7", "needs 8"))
def _entries_few(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 28, u32(7))
    return path


@case("max-entries-absurd", "header", "max table entries 0xFFFFFFFF: refused without allocating "
      "a table of that size", fails(FormatError, "4294967295 entries"))
def _entries_absurd(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 28, u32(0xFFFFFFFF))
    return path


@case("bat-huge-sparse", "header", "a sparse file whose header asks for a BAT of 2^23 "
      "entries (32 MiB, 512-byte blocks of a 4 GiB disk) that does fit the file: refused before "
      "reading it", fails(FormatError, "8388608 BAT entries", "more than the"))
def _bat_huge(folder: Path) -> Path:
    path = _dyn(folder)
    entries = 1 << 23
    table = read_header(path).table_offset
    footer = read_at(path, footer_offset(path), FOOTER_SIZE)
    patch(path, table + entries * 4, footer)  # the file grows sparsely past the table
    patch_header(path, 28, u32(entries))
    patch_header(path, 32, u32(512))
    patch_footer(path, 40, u64(entries * 512))
    patch_footer(path, 48, u64(entries * 512))
    return path


@case("bat-offset-unaligned", "header", "BAT offset not a multiple of 512",
      fails(FormatError, "BAT offset", "byte 16", "1537"))
def _bat_unaligned(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 16, u64(1537))
    return path


@case("bat-offset-past-end", "header", "BAT offset beyond the end of the file",
      fails(FormatError, "BAT at offset", str(1 << 40)))
def _bat_past(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 16, u64(1 << 40))
    return path


@case("bat-overlaps-header", "header", "BAT placed on top of the dynamic header",
      fails(FormatError, "overlaps the header"))
def _bat_on_header(folder: Path) -> Path:
    path = _dyn(folder)
    patch_header(path, 16, u64(1024))
    return path


# ---- BAT entries (the image opens; the damaged block cannot be read; writing is refused)
def _bad_block_case(name: str, summary: str, entry_text: str, damage: Callable[[Path], None],
                    good: tuple[int, ...] = (0, 2), lines: int = 1) -> None:
    """Blocks 0, 1 and 2 hold data; `damage` breaks BAT entry 1. The blocks in `good` must
    still read right."""
    @case(name, "bat", summary + ": opens with a warning naming the block; reading it fails; "
          "writable open is refused; the other blocks still read",
          warns("BAT entry 1", entry_text, lines=lines),
          read=fails(FormatError, "BAT entry", "file offset"),
          write=fails(FormatError, "refusing to write"))
    def _build(folder: Path) -> Built:
        writes = tuple((i * BLOCK_SIZE, 4096) for i in range(3))
        path = make_dynamic(folder / "disk.vhd", writes=writes)
        damage(path)
        return Built(path, expect=tuple((i * BLOCK_SIZE, pattern(i * BLOCK_SIZE, 4096)) for i in good))


_bad_block_case("bat-entry-past-eof", "BAT entry past the end of the file", "past the data area",
                lambda p: set_bat_entry(p, 1, (1 << 32) - 2))
_bad_block_case("bat-entry-in-metadata", "BAT entry pointing into the dynamic header (and over "
                "block 0's storage)", "overlaps the dynamic header", lambda p: set_bat_entry(p, 1, 1))
_bad_block_case("bat-entry-in-bat", "BAT entry pointing at the BAT itself", "overlaps the BAT",
                lambda p: set_bat_entry(p, 1, read_header(p).table_offset // 512))
_bad_block_case("bat-entries-shared", "two BAT entries on one block (both are suspect: one "
                "warning line each)", "block 0", lambda p: set_bat_entry(p, 1, bat_entries(p)[0]),
                good=(2,), lines=2)


# ---- parent locators and chains
@case("diff-no-parent-info", "chain", "differencing disk with no locators and no parent name",
      fails(ParentNotFound, "without parent locators or parent name", "--parent"))
def _no_parent_info(folder: Path) -> Path:
    _, child = _chain(folder)
    relink(child, locators=[], parent_name="")
    return child


@case("locator-length-beyond-space", "locator", "a locator whose data length exceeds its space",
      fails(FormatError, "parent locator 0", "header byte 576", "exceeds its data space"))
def _locator_length(folder: Path) -> Path:
    _, child = _chain(folder)
    header = read_header(child)
    loc = header.locators[0]
    patch_header(child, LOCATOR_TABLE_AT + 8, u32(loc.space_bytes + 512))
    return child


@case("locator-offset-past-end", "locator", "a locator whose data lies beyond the end of the file",
      fails(FormatError, "parent locator 0", "outside the file"))
def _locator_offset(folder: Path) -> Path:
    _, child = _chain(folder)
    patch_header(child, LOCATOR_TABLE_AT + 16, u64(1 << 40))
    return child


def _cycle(folder: Path, length: int) -> Path:
    """Differencing disks d0 -> d1 -> ... -> d(length-1) -> d0, each with matching ids."""
    base = make_dynamic(folder / "base.vhd", writes=())
    disks = [make_child(folder / f"d{i}.vhd", base, writes=()) for i in range(length)]
    for i, disk in enumerate(disks):
        parent = disks[(i + 1) % length]
        relink(disk, parent_id=read_footer(parent).unique_id, locators=[w2ru(".\\" + parent.name)],
               parent_name=parent.name)
    return disks[0]


for _length in (1, 2, 3):
    @case(f"parent-cycle-{_length}", "chain", f"a parent loop of {_length} disk(s)",
          fails(ChainCycle, "already in the chain"))
    def _cycle_case(folder: Path, _length: int = _length) -> Path:
        return _cycle(folder, _length)


def deep_chain(folder: Path, layers: int) -> Path:
    """A chain of `layers` files: a dynamic base and layers-1 differencing children."""
    top = make_dynamic(folder / "l000.vhd", size=MIB, writes=())
    for depth in range(1, layers):
        top = make_child(folder / f"l{depth:03d}.vhd", top, writes=())
    return top


@case("chain-at-limit", "chain", f"a chain of exactly {MAX_CHAIN_DEPTH} layers opens", OK)
def _chain_limit(folder: Path) -> Path:
    return deep_chain(folder, MAX_CHAIN_DEPTH)


@case("chain-too-deep", "chain", f"a chain of {MAX_CHAIN_DEPTH + 1} layers is refused",
      fails(ChainTooDeep, f"deeper than {MAX_CHAIN_DEPTH}"))
def _chain_deep(folder: Path) -> Path:
    return deep_chain(folder, MAX_CHAIN_DEPTH + 1)


@case("parent-id-mismatch", "chain", "the parent found has another unique id",
      fails(ParentMismatch, "expects parent id", "base.vhd has unique id"))
def _id_mismatch(folder: Path) -> Path:
    _, child = _chain(folder)
    relink(child, parent_id=uuid.uuid4().bytes)
    return child


@case("parent-size-differs", "chain", "the parent's virtual size differs from the child's",
      fails(ParentMismatch, "sizes must agree"))
def _size_differs(folder: Path) -> Path:
    base, child = _chain(folder)
    patch_footer(base, 48, u64(DISK_SIZE - BLOCK_SIZE))  # current size
    patch_footer(base, 40, u64(DISK_SIZE - BLOCK_SIZE))  # original size
    return child


@case("parent-is-fifo", "chain", "the locators name a FIFO: refused after stat, never opened",
      fails(ParentNotFound, "a FIFO, not opened"))
def _parent_fifo(folder: Path) -> Built:
    base, child = _chain(folder)
    base.unlink()
    os.mkfifo(base)
    return Built(child, watch=(base,))


@case("parent-is-directory", "chain", "the locators name a directory", fails(
    ParentNotFound, "a directory, not opened"))
def _parent_dir(folder: Path) -> Built:
    base, child = _chain(folder)
    base.unlink()
    base.mkdir()
    return Built(child, watch=(base,))


@case("parent-is-device", "chain", "the locators name a device node: never opened",
      fails(ParentNotFound, "a device, not opened"), needs_root=True)
def _parent_device(folder: Path) -> Built:
    base, child = _chain(folder)
    base.unlink()
    null = os.stat("/dev/null")
    os.mknod(base, stat.S_IFCHR | 0o600, null.st_rdev)
    return Built(child, watch=(base,))


# ---- hostile parent locators: paths from inside an image are only followed to regular files
# named as images. Where it proves the guard, the forbidden target IS the right parent (a valid
# VHD with the expected unique id): without the guard the chain would open.
CHILD_WRITES = ((1024, 1536),)
CHAIN_EXPECT = ((0, pattern(0, 1024)), (1024, pattern(1024, 1536, 2)), (2560, pattern(2560, 4096 - 2560)),
                (2 * BLOCK_SIZE, pattern(2 * BLOCK_SIZE, 4096)), (64 * KIB, bytes(512)))


@case("locator-unknown-code", "locator", "a locator entry with an unknown platform code whose "
      "data space covers the blocks: ignored (found by the fuzzer: its space made good blocks "
      "unreadable)", OK)
def _unknown_code(folder: Path) -> Built:
    _, child = _chain(folder)
    patch_header(child, LOCATOR_TABLE_AT, b"\xff\xff\xff\xff")
    patch_header(child, LOCATOR_TABLE_AT + 4, u32(0x00103000))
    return Built(child, expect=CHAIN_EXPECT)


def _decoy_parent(at: Path, child: Path) -> Path:
    """A copy of the child's parent at `at`: same unique id, any name."""
    at.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(child.parent / "base.vhd", at)
    return at


@case("locators-disagree", "locator", "the relative locator names a valid VHD with another "
      "unique id, the absolute one the right parent: the right one is used, the other reported",
      warns("decoy.vhd has unique id", "found by W2ku"))
def _locators_disagree(folder: Path) -> Built:
    base, child = _chain(folder)
    real = folder / "real"
    real.mkdir()
    base = base.rename(real / "base.vhd")
    make_dynamic(folder / "decoy.vhd")
    relink(child, locators=[w2ru(".\\decoy.vhd"), w2ku(str(base))], parent_name="base.vhd")
    return Built(child, expect=CHAIN_EXPECT)


@case("locator-dotdot-etc-shadow", "locator", "relative locator `..\\..\\etc\\shadow`: not an "
      "image file name, never opened (even though a matching parent sits there)",
      fails(ParentNotFound, "not an image file name, not opened"))
def _dotdot_shadow(folder: Path) -> Built:
    _, child = _chain(folder)
    deep = folder / "a" / "b"
    deep.mkdir(parents=True)
    child = child.rename(deep / "child.vhd")
    target = _decoy_parent(folder / "etc" / "shadow", child.parent.parent.parent / "child.vhd")
    relink(child, locators=[w2ru("..\\..\\etc\\shadow")], parent_name="shadow")
    return Built(child, watch=(target,))


@case("locator-absolute-etc-shadow", "locator", "absolute locators `/etc/shadow` (W2ku, MacX "
      "file URL): never opened, nor a matching `shadow` next to the child",
      fails(ParentNotFound, "/etc/shadow", "not an image file name, not opened"))
def _abs_shadow(folder: Path) -> Built:
    _, child = _chain(folder)
    target = _decoy_parent(folder / "shadow", child)
    relink(child, locators=[w2ku("/etc/shadow"), macx("file:///etc/shadow")], parent_name="\\etc\\shadow")
    return Built(child, watch=(Path("/etc/shadow"), target))


@case("locator-windows-dotdot", "locator", "absolute locator `C:\\..\\x`: its file name `x` is "
      "not an image name, never opened",
      fails(ParentNotFound, "not an image file name, not opened"))
def _windows_dotdot(folder: Path) -> Built:
    _, child = _chain(folder)
    target = _decoy_parent(folder / "x", child)
    relink(child, locators=[w2ku("C:\\..\\x")], parent_name="C:\\..\\x")
    return Built(child, watch=(target,))


@case("locator-symlink-out-to-non-image", "locator", "the parent named `base.vhd` is a symlink "
      "leaving the folder to a file not named as an image: not opened",
      fails(ParentNotFound, "a link to", "not an image file name, not opened"))
def _symlink_non_image(folder: Path) -> Built:
    base, child = _chain(folder)
    target = base.rename(folder / "secret")
    inner = folder / "inner"
    inner.mkdir()
    child = child.rename(inner / "child.vhd")
    link = inner / "base.vhd"
    link.symlink_to(os.path.relpath(target, inner))
    relink(child, locators=[w2ru(".\\base.vhd")], parent_name="base.vhd")
    return Built(child, watch=(link, target))


@case("locator-symlink-out-to-image", "locator", "the parent `base.vhd` is a symlink leaving "
      "the folder to a regular image file (a shared base): followed", OK)
def _symlink_image(folder: Path) -> Built:
    base, child = _chain(folder)
    shared = folder / "shared"
    shared.mkdir()
    base.rename(shared / "golden.vhd")
    inner = folder / "inner"
    inner.mkdir()
    child = child.rename(inner / "child.vhd")
    (inner / "base.vhd").symlink_to("../shared/golden.vhd")
    relink(child, locators=[w2ru(".\\base.vhd")], parent_name="base.vhd")
    return Built(child, expect=CHAIN_EXPECT)


def url_locators(folder: Path, port: int = 9) -> Built:
    """Locators that are URLs (http, https): never fetched, not mapped to local names."""
    _, child = _chain(folder)
    relink(child, locators=[macx(f"http://127.0.0.1:{port}/base.vhd"),
                            w2ku(f"https://127.0.0.1:{port}/base.vhd")], parent_name="")
    return Built(child)


@case("locator-url", "locator", "locators that are http/https URLs: never fetched",
      fails(ParentNotFound, "not found"))
def _url(folder: Path) -> Built:
    return url_locators(folder)


@case("locator-unpaired-surrogates", "locator", "locator and parent name text with unpaired "
      "UTF-16 surrogates: decoded as U+FFFD, one clean message line",
      fails(ParentNotFound, "\ufffd", "not found"))
def _surrogates(folder: Path) -> Built:
    _, child = _chain(folder)
    relink(child, locators=[w2ru(".\\ba\ud800se.vhd"), w2ku("C:\\x\udc00.vhd"),
                            macx("file:///tmp/\udcff.vhd")], parent_name="pa\udbffrent.vhd")
    return Built(child)


@case("locator-control-characters", "locator", "locator text with a newline and a terminal "
      "escape: shown as U+FFFD, the message stays one line",
      fails(ParentNotFound, "ba\ufffdse\ufffd[2J.vhd"))
def _control(folder: Path) -> Built:
    _, child = _chain(folder)
    relink(child, locators=[w2ru(".\\ba\nse\x1b[2J.vhd"), macx("file:///x/%0A%1b.vhd")],
           parent_name="a\r\nb.vhd")
    return Built(child)


@case("user-parent-is-fifo", "chain", "`--parent` names a FIFO: stat shows it, never opened",
      fails(ParentNotFound, "a FIFO, not opened"))
def _user_fifo(folder: Path) -> Built:
    base, child = _chain(folder)
    base.unlink()
    fifo = folder / "pipe.vhd"
    os.mkfifo(fifo)
    return Built(child, args=("--parent", str(fifo)), watch=(fifo,))


@case("parent-not-a-vhd", "chain", "the file the locators name is not a VHD",
      fails(ParentNotFound, "not a usable VHD", "cookie"))
def _parent_garbage(folder: Path) -> Path:
    base, child = _chain(folder)
    base.write_bytes(b"\x5a" * 8192)
    return child


@case("parent-bad-checksum", "chain", "the parent's footer checksum is wrong: reading warns; "
      "writing the child is allowed (the parent is only read)",
      warns("base.vhd", "checksum"), write=warns("base.vhd", "checksum"))
def _parent_checksum(folder: Path) -> Built:
    base, child = _chain(folder)
    _bad_checksum(base, FOOTER_CHECKSUM_AT, footer_offset(base), True)
    return Built(child, expect=CHAIN_EXPECT)


@case("parent-bad-block", "chain", "a parent block the child reads through has a wild BAT "
      "entry: opening warns, reading fails naming the parent's entry, the child stays writable",
      warns("base.vhd", "BAT entry 2"), read=fails(FormatError, "base.vhd", "BAT entry 2"),
      write=warns("base.vhd", "BAT entry 2"))
def _parent_block(folder: Path) -> Built:
    base, child = _chain(folder)
    set_bat_entry(base, 2, 1)
    return Built(child, expect=CHAIN_EXPECT[:3])


# ---- corpus on disk
def case_by_name(name: str) -> Case:
    for item in CASES:
        if item.name == name:
            return item
    raise KeyError(name)


def describe(outcome: Outcome) -> dict[str, object]:
    return {"error": outcome.error.__name__ if outcome.error else None,
            "exit_code": outcome.exit_code, "mentions": list(outcome.mentions),
            "warnings": list(outcome.warnings)}


def build_corpus(out: Path, only: set[str] | None = None) -> list[dict[str, object]]:
    manifest = []
    for item in CASES:
        if item.needs_root and os.geteuid() != 0 or (only and item.name not in only):
            continue
        folder = out / item.name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        built = item.build(folder)
        manifest.append({"name": item.name, "group": item.group, "summary": item.summary,
                         "image": str(built.image.relative_to(out)), "args": list(built.args),
                         "built_mentions": list(built.mentions),
                         "info": describe(item.info), "read": describe(item.read_outcome),
                         "write": describe(item.write_outcome)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _outcome_text(outcome: Outcome) -> str:
    if outcome.error is not None:
        return f"{outcome.error.__name__} ({outcome.exit_code})"
    return "warns" if outcome.warnings else "ok"


def markdown_table() -> str:
    """The case list of docs/reliability.md (a test keeps the two equal)."""
    rows = ["| case | what is wrong, what must happen | info | full read | writable open |",
            "|---|---|---|---|---|"]
    for item in CASES:
        summary = item.summary.replace("|", "\\|")
        rows.append(f"| `{item.name}` | {summary} | {_outcome_text(item.info)} | "
                    f"{_outcome_text(item.read_outcome)} | {_outcome_text(item.write_outcome)} |")
    return "\n".join(rows) + "\n"


def check_corpus(out: Path, manifest: list[dict[str, object]]) -> int:
    """Run `vhdfs info` on every case (in a subprocess, under a timeout); count mismatches."""
    failures = 0
    for entry in manifest:
        expect = entry["info"]
        cmd = [sys.executable, "-m", "vhdfs", "info", str(out / entry["image"]), *entry["args"]]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            print(f"FAIL {entry['name']}: hung", flush=True)
            failures += 1
            continue
        lines = done.stderr.splitlines()
        problems = []
        if done.returncode != expect["exit_code"]:
            problems.append(f"exit {done.returncode}, expected {expect['exit_code']}")
        if any("Traceback" in line or "internal error" in line for line in lines):
            problems.append("traceback or internal error")
        text = done.stderr
        words = expect["mentions"] + expect["warnings"] + entry["built_mentions"]
        problems += [f"message lacks {word!r}" for word in words if word not in text]
        status = "FAIL" if problems else "ok"
        print(f"{status:4} {entry['name']}: exit {done.returncode}; {lines[-1] if lines else ''}"
              + (f" [{'; '.join(problems)}]" if problems else ""), flush=True)
        failures += bool(problems)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder for the corpus (one subfolder per case)")
    parser.add_argument("--check", action="store_true", help="run vhdfs info on every case")
    parser.add_argument("--table", action="store_true", help="print the case table of "
                        "docs/reliability.md and stop")
    parser.add_argument("--only", help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    if args.table:
        sys.stdout.write(markdown_table())
        return 0
    if args.out is None:
        parser.error("OUT is required")
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {item.name for item in CASES}
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = build_corpus(args.out, only)
    print(f"{len(manifest)} cases in {args.out}")
    if args.check:
        return 1 if check_corpus(args.out, manifest) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
