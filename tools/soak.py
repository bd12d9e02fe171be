"""Structure-aware fuzzing of VHD images: valid seeds, mutated fields and bytes, every
operation under a deadline and an allocation cap.

Seeds are valid images made by vhdfs.create (a fixed disk, a dynamic disk, a differencing
chain over a dynamic and over a fixed base). A mutation knows the layout of its seed:
footer and footer copy fields, header fields, BAT entries, sector bitmaps, locator entries and
their text, the file size; values are picked to hit boundaries (0, 1, all ones, the file size,
an offset inside the metadata, another block's entry, ...), checksums are recomputed or not.

Each mutated image goes through `exercise`: open + the facts `vhdfs info` shows, `vhdfs check`,
a full read of the flat disk, and (the image is a private copy) a writable open with writes
that must read back. The only acceptable outcomes are success or a VhdfsError: any other
exception, a hang (SIGALRM deadline) or an allocation above the cap is a failure, and so is
`check` calling an image clean that a reader or writer refuses.

tests/hostile/test_hostile_fuzz.py runs a quick profile through hypothesis in CI; this tool
runs the long one and reports figures:

    python -m tools.soak --minutes 30 [--seed N] [--out DIR]

Failing images are kept in DIR (default: a temporary folder) with the mutation list.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.vhdimages import (
    FOOTER_CHECKSUM_AT,
    HEADER_CHECKSUM_AT,
    KIB,
    MIB,
    make_child,
    make_dynamic,
    make_fixed,
    pattern,
    with_checksum,
    write_data,
)
from vhdfs.errors import VhdfsError
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.dynheader import HEADER_SIZE
from vhdfs.vhd.footer import FOOTER_SIZE
from vhdfs.vhd.layer import Layer

SECTOR = 512
DEADLINE_SECONDS = 20.0
# What one mutated image may make us allocate (Python allocations, tracemalloc peak). The
# seeds are at most a few MiB and reads go in chunks: anything near this is a header field
# turned into an allocation size.
ALLOCATION_CAP = 48 * MIB
READ_CHUNK = 1 * MIB


# ------------------------------------------------------------------ hang and memory guards
class Hang(Exception):
    """An operation did not return before the deadline."""


class MemoryBlowUp(Exception):
    """An operation allocated more than the cap."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def allocation_cap(limit: int) -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if started:
            tracemalloc.stop()
    if peak > limit:
        raise MemoryBlowUp(f"allocated {peak} bytes (cap {limit})")


# ------------------------------------------------------------------ seeds and their layout
@dataclass
class FileLayout:
    """Where the structures of one valid VHD file are."""

    name: str
    size: int
    footer_at: int
    dynamic: bool
    header_at: int = 0
    bat_at: int = 0
    entries: int = 0
    block_size: int = 0
    bitmaps: list[int] = field(default_factory=list)  # file offsets of allocated blocks' bitmaps
    bitmap_size: int = 0
    locators: list[tuple[int, int]] = field(default_factory=list)  # (data offset, space)


@dataclass
class Seed:
    name: str
    folder: Path
    files: list[FileLayout]  # top first
    disk_size: int

    @property
    def top(self) -> str:
        return self.files[0].name


def layout_of(path: Path) -> FileLayout:
    with Layer(LocalFile(path)) as layer:
        out = FileLayout(path.name, path.stat().st_size, layer.footer_offset,
                         layer.header is not None)
        if layer.header is not None:
            out.header_at = layer.footer.data_offset
            out.bat_at = layer.header.table_offset
            out.entries = layer.header.max_table_entries
            out.block_size = layer.block_size
            out.bitmap_size = layer.bitmap_size
            out.bitmaps = [entry * SECTOR for entry in layer.bat if entry != 0xFFFFFFFF]
            out.locators = [(loc.data_offset, loc.space_bytes) for loc in layer.header.locators
                            if loc.data_offset and layer.is_differencing]
        return out


SEED_DISK = 2 * MIB
SEED_BLOCK = 512 * KIB


def build_seeds(folder: Path) -> list[Seed]:
    """Four small valid images (a few hundred KiB each on disk)."""
    seeds = []

    def add(name: str, files: list[Path]) -> None:
        seeds.append(Seed(name, files[0].parent, [layout_of(f) for f in files], SEED_DISK))

    fixed_dir = folder / "fixed"
    fixed_dir.mkdir(parents=True)
    fixed = make_fixed(fixed_dir / "disk.vhd", SEED_DISK)
    write_data(fixed, [(0, 8 * KIB), (SEED_DISK - 4 * KIB, 4 * KIB)])
    add("fixed", [fixed])

    dyn_dir = folder / "dynamic"
    dyn_dir.mkdir()
    dyn = make_dynamic(dyn_dir / "disk.vhd", SEED_DISK, SEED_BLOCK,
                       writes=((0, 16 * KIB), (SEED_BLOCK + 4096, 4096), (3 * SEED_BLOCK, 512)))
    add("dynamic", [dyn])

    for name, base_maker in (("chain", "dynamic"), ("chain-fixed-base", "fixed")):
        chain_dir = folder / name
        chain_dir.mkdir()
        if base_maker == "dynamic":
            base = make_dynamic(chain_dir / "base.vhd", SEED_DISK, SEED_BLOCK,
                                writes=((0, 64 * KIB), (2 * SEED_BLOCK, 8 * KIB)))
        else:
            base = make_fixed(chain_dir / "base.vhd", SEED_DISK)
            write_data(base, [(0, 64 * KIB), (2 * SEED_BLOCK, 8 * KIB)])
        # Partial sectors and runs inside one bitmap byte, over parent data and over zeros.
        child = make_child(chain_dir / "child.vhd", base,
                           writes=((1024, 1536), (8 * KIB, 512), (9 * KIB + 512, 512),
                                   (SEED_BLOCK + 2048, 4096)), seed=3)
        add(name, [child, base])
    return seeds


# ------------------------------------------------------------------ mutations
@dataclass(frozen=True)
class Mutation:
    file: str  # file name inside the seed folder
    what: str  # for the report: region and field
    offset: int = -1  # bytes written at offset (-1: a resize)
    data: bytes = b""
    resize: int = -1  # new file size
    checksum: str = ""  # "footer@OFFSET" / "header@OFFSET": recompute after all patches

    def as_dict(self) -> dict:
        return {"file": self.file, "what": self.what, "offset": self.offset,
                "data": self.data.hex(), "resize": self.resize, "checksum": self.checksum}


FOOTER_FIELDS = {"features": (8, 4), "version": (12, 4), "data_offset": (16, 8),
                 "timestamp": (24, 4), "creator_app": (28, 4), "original_size": (40, 8),
                 "current_size": (48, 8), "cylinders": (56, 2), "heads": (58, 1),
                 "sectors": (59, 1), "disk_type": (60, 4), "checksum": (64, 4),
                 "unique_id": (68, 16), "saved_state": (84, 1), "cookie": (0, 8)}
HEADER_FIELDS = {"cookie": (0, 8), "data_offset": (8, 8), "table_offset": (16, 8),
                 "version": (24, 4), "max_table_entries": (28, 4), "block_size": (32, 4),
                 "checksum": (36, 4), "parent_unique_id": (40, 16), "parent_timestamp": (56, 4),
                 "parent_name": (64, 512)}
LOCATOR_FIELDS = {"code": (0, 4), "data_space": (4, 4), "data_length": (8, 4),
                  "reserved": (12, 4), "data_offset": (16, 8)}
LOCATOR_CODES = [b"W2ru", b"W2ku", b"MacX", b"Wi2r", b"Wi2k", b"Mac ", b"\0\0\0\0", b"\xff\xff\xff\xff"]
HOSTILE_TEXTS = ["..\\..\\etc\\shadow", "/etc/shadow", "C:\\..\\x", "file:///dev/zero",
                 "/dev/zero.vhd", "http://127.0.0.1:9/base.vhd", ".\\base.vhd\n\x1b[2J",
                 ".\\\ud800base.vhd", "\\\\server\\share\\base.vhd", ".\\child.vhd", "",
                 "." * 300, ".\\" + "a" * 250 + ".vhd", "/proc/self/mem", ".\\base.vhd"]


def interesting_ints(rng: random.Random, size: int, current: int, layout: FileLayout) -> int:
    top = (1 << (8 * size)) - 1
    choices = [0, 1, top, top - 1, 1 << (8 * size - 1), current + 1, max(current - 1, 0),
               current * 2, current // 2, current + SECTOR, max(current - SECTOR, 0),
               layout.size, layout.size - SECTOR, layout.size + SECTOR, layout.footer_at,
               rng.randrange(0, max(layout.size, 1), SECTOR), rng.randrange(0, 4096),
               1 << rng.randrange(0, 8 * size), layout.header_at, layout.bat_at,
               layout.bat_at // SECTOR, layout.footer_at // SECTOR]
    return rng.choice(choices) & top


def _int_field(rng: random.Random, layout: FileLayout, raw: bytes, at: int, size: int) -> bytes:
    current = int.from_bytes(raw[at:at + size], "big")
    return interesting_ints(rng, size, current, layout).to_bytes(size, "big")


def _random_bytes(rng: random.Random, count: int) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return bytes(count)
    if kind == 1:
        return b"\xff" * count
    if kind == 2:
        return bytes([0xAA, 0x55][i % 2] for i in range(count))
    return bytes(rng.randrange(256) for _ in range(count))


# Where a mutation lands (a test may force one family: footer, header, bat, bitmap, locator).
FAMILIES = {"footer": ("footer", "copy"), "header": ("header",), "bat": ("bat",),
            "bitmap": ("bitmap",), "locator": ("locator", "locator-text"),
            "file": ("file-size", "bytes")}


def mutate_once(rng: random.Random, seed: Seed, raw_of: dict[str, bytes],
                family: str | None = None) -> Mutation:
    candidates = seed.files
    if family not in (None, "footer", "file"):
        candidates = [f for f in seed.files if f.dynamic and (family != "bitmap" or f.bitmaps)
                      and (family != "locator" or f.locators)] or seed.files
    layout = rng.choice(candidates)
    raw = raw_of[layout.name]
    regions = ["footer", "footer", "file-size", "bytes"]
    if layout.dynamic:
        regions += ["copy", "header", "header", "header", "bat", "bat", "bitmap", "locator",
                    "locator-text"]
    if family is not None:
        regions = [r for r in regions if r in FAMILIES[family]] or regions
    region = rng.choice(regions)
    if region == "locator":  # a field of a locator entry, in the header
        region, locator_field = "header", True
    else:
        locator_field = rng.random() < 0.3
    fix = rng.random() < 0.7
    if region in ("footer", "copy"):
        return _mutate_footer(rng, layout, raw, region, fix)
    if region == "header":
        return _mutate_header(rng, layout, raw, locator_field, fix)
    return _mutate_data(rng, layout, raw, region)


def _mutate_footer(rng: random.Random, layout: FileLayout, raw: bytes, region: str,
                   fix: bool) -> Mutation:
    """A field of the trailing footer or of its copy at offset 0."""
    base = layout.footer_at if region == "footer" else 0
    name, (at, size) = rng.choice(sorted(FOOTER_FIELDS.items()))
    if size > 8:
        data = _random_bytes(rng, size)
    else:
        data = _int_field(rng, layout, raw[base:base + FOOTER_SIZE], at, size)
    return Mutation(layout.name, f"{region}.{name}", base + at, data,
                    checksum=f"footer@{base}" if fix and name != "checksum" else "")


def _mutate_header(rng: random.Random, layout: FileLayout, raw: bytes, locator_field: bool,
                   fix: bool) -> Mutation:
    """A field of the dynamic header, or of one of its locator entries."""
    base = layout.header_at
    if locator_field:
        index = rng.randrange(8) if rng.random() < 0.3 else rng.randrange(max(len(layout.locators), 1))
        name, (at, size) = rng.choice(sorted(LOCATOR_FIELDS.items()))
        at += 576 + 24 * index
        if name == "code":
            data = rng.choice(LOCATOR_CODES)
        else:
            data = _int_field(rng, layout, raw[base:base + HEADER_SIZE], at, size)
        name = f"locator{index}.{name}"
    else:
        name, (at, size) = rng.choice(sorted(HEADER_FIELDS.items()))
        if name == "parent_name":
            text = rng.choice(HOSTILE_TEXTS)
            data = text.encode("utf-16-be", errors="surrogatepass")[:512].ljust(512, b"\0")
        elif size > 8:
            data = _random_bytes(rng, size)
        else:
            data = _int_field(rng, layout, raw[base:base + HEADER_SIZE], at, size)
    return Mutation(layout.name, f"header.{name}", base + at, data,
                    checksum=f"header@{base}" if fix and name != "checksum" else "")


def _mutate_data(rng: random.Random, layout: FileLayout, raw: bytes, region: str) -> Mutation:
    """A BAT entry, bitmap bytes, a locator's text, the file's size, or bytes anywhere."""
    if region == "bat":
        index = rng.randrange(layout.entries)
        entries = [int.from_bytes(raw[layout.bat_at + 4 * i:layout.bat_at + 4 * i + 4], "big")
                   for i in range(layout.entries)]
        allocated = [e for e in entries if e != 0xFFFFFFFF] or [0]
        value = rng.choice([0xFFFFFFFF, 0, 1, rng.choice(allocated), rng.choice(allocated) + 1,
                            layout.footer_at // SECTOR, layout.size // SECTOR, 0xFFFFFFFE,
                            layout.bat_at // SECTOR, layout.header_at // SECTOR,
                            rng.randrange(0, layout.size // SECTOR)])
        return Mutation(layout.name, f"bat[{index}]", layout.bat_at + 4 * index, value.to_bytes(4, "big"))
    if region == "bitmap" and layout.bitmaps:
        start = rng.choice(layout.bitmaps)
        at = rng.randrange(layout.bitmap_size)
        count = rng.choice([1, 2, 8, 64, layout.bitmap_size - at])
        count = min(count, layout.bitmap_size - at)
        return Mutation(layout.name, "bitmap", start + at, _random_bytes(rng, count))
    if region == "locator-text" and layout.locators:
        offset, space = rng.choice(layout.locators)
        text = rng.choice(HOSTILE_TEXTS)
        encoding = rng.choice(["utf-16-le", "utf-8"])
        data = text.encode(encoding, errors="surrogatepass")[:space]
        return Mutation(layout.name, "locator-text", offset, data.ljust(min(space, len(data) + 2), b"\0"))
    if region == "file-size":
        new = rng.choice([0, 100, SECTOR, layout.size - 1, layout.size - SECTOR, layout.size + 1,
                          layout.size + SECTOR, layout.size + 3 * SECTOR, layout.size // 2,
                          layout.footer_at + 100])
        return Mutation(layout.name, "file-size", resize=max(new, 0))
    # Random bytes anywhere in the metadata (or anywhere at all).
    limit = layout.footer_at + FOOTER_SIZE
    hot = [0, layout.footer_at, layout.header_at, layout.bat_at] if layout.dynamic else [layout.footer_at]
    start = rng.choice(hot) + rng.randrange(0, 1024) if rng.random() < 0.8 else rng.randrange(limit)
    start = min(start, limit - 1)
    count = min(rng.choice([1, 2, 4, 16]), limit - start)
    return Mutation(layout.name, "bytes", start, bytes(rng.randrange(256) for _ in range(count)))


def mutations_for(rng: random.Random, seed: Seed, family: str | None = None) -> list[Mutation]:
    raw_of = {f.name: (seed.folder / f.name).read_bytes() for f in seed.files}
    return [mutate_once(rng, seed, raw_of, family) for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]


def apply(folder: Path, mutations: list[Mutation]) -> None:
    for mutation in mutations:
        path = folder / mutation.file
        if mutation.resize >= 0:
            os.truncate(path, mutation.resize)
            continue
        size = path.stat().st_size
        if mutation.offset >= size:
            continue  # the file shrank under an earlier mutation
        with open(path, "r+b") as handle:
            handle.seek(mutation.offset)
            handle.write(mutation.data[:size - mutation.offset])
    for mutation in mutations:
        if not mutation.checksum:
            continue
        kind, at = mutation.checksum.split("@")
        start, length, field_at = (int(at), FOOTER_SIZE, FOOTER_CHECKSUM_AT) if kind == "footer" else (
            int(at), HEADER_SIZE, HEADER_CHECKSUM_AT)
        path = folder / mutation.file
        with open(path, "r+b") as handle:
            handle.seek(start)
            raw = handle.read(length)
            if len(raw) == length:
                handle.seek(start)
                handle.write(with_checksum(raw, field_at))


# ------------------------------------------------------------------ the operations
@dataclass
class Result:
    """How far one mutated image got; `error` is the class of the VhdfsError that stopped
    an operation (None: it succeeded)."""

    opened: str | None = None
    checked: str | None = None
    check_exit: int | None = None
    read: str | None = None
    written: str | None = None
    steps: list[str] = field(default_factory=list)


def _outcome(exc: VhdfsError | None) -> str:
    return "ok" if exc is None else type(exc).__name__


def _full_read(chain) -> int:
    """Every byte of the flat disk, extent by extent; returns the data bytes read."""
    read = 0
    for extent in chain.iter_extents():
        if extent.is_zero:
            continue
        done = 0
        while done < extent.length:
            n = min(READ_CHUNK, extent.length - done)
            data = chain.read(extent.offset + done, n)
            if len(data) != n:
                raise AssertionError(f"chain.read returned {len(data)} of {n} bytes")
            done += n
            read += n
    return read


def _writes(rng: random.Random, size: int) -> list[tuple[int, bytes]]:
    out = []
    for index in range(rng.randrange(1, 4)):
        length = rng.choice([1, 512, 700, 4096, 70 * KIB])
        length = min(length, size)
        offset = rng.randrange(0, max(size - length, 0) + 1)
        out.append((offset, pattern(0, -(-length // SECTOR) * SECTOR, 7 + index)[:length]))
    return out


class Disagreement(AssertionError):
    """`vhdfs check` calls an image clean that the readers refuse (or the other way round)."""


def _agree(result: Result) -> None:
    refused = {result.opened, result.read, result.written} - {"ok", None}
    if result.check_exit == 0 and refused:
        raise Disagreement(f"check calls the image clean, but open {result.opened}, read "
                           f"{result.read}, write {result.written}")


def exercise(folder: Path, seed: Seed, rng: random.Random) -> Result:
    """info, check, full read and a write on the (already mutated, private) image."""
    from vhdfs.info import layer_facts
    from vhdfs.resolve import open_chain

    top = str(folder / seed.top)
    result = Result()
    try:
        with open_chain(top) as chain:
            layer_facts(chain)
            size = chain.size
        result.opened = "ok"
    except VhdfsError as exc:
        result.opened = _outcome(exc)
    check_image = _checker()
    if check_image is not None:
        try:
            report = check_image(top)
            report.as_dict()
            result.checked, result.check_exit = "ok", report.exit_code
        except VhdfsError as exc:
            result.checked = _outcome(exc)
    if result.opened != "ok":
        _agree(result)
        return result
    try:
        with open_chain(top) as chain:
            _full_read(chain)
        result.read = "ok"
    except VhdfsError as exc:
        result.read = _outcome(exc)
    writes = _writes(rng, size)
    try:
        with open_chain(top, writable=True) as chain:
            for offset, data in writes:
                chain.write(offset, data)
            chain.flush()
        result.written = "ok"
    except VhdfsError as exc:
        result.written = _outcome(exc)
        _agree(result)
        return result
    _read_back(top, writes)
    if check_image is not None and result.check_exit == 0:
        after = check_image(top)
        if after.exit_code != 0:
            raise AssertionError(f"writing a clean image made check exit {after.exit_code}: "
                                 f"{after.as_dict()}")
    _agree(result)
    return result


def _checker() -> Callable | None:
    """vhdfs.maintain.check.check_image, or None in an older tree without `vhdfs check`."""
    try:
        from vhdfs.maintain.check import check_image
    except ImportError:
        return None
    return check_image


def _read_back(top: str, writes: list[tuple[int, bytes]]) -> None:
    """Writes that succeeded must read back (where no later write overlaps them), and the
    image must still open."""
    from vhdfs.resolve import open_chain

    with open_chain(top) as chain:
        for index, (offset, data) in enumerate(writes):
            overlapped = any(o < offset + len(data) and offset < o + len(d) for o, d in writes[index + 1:])
            if not overlapped and chain.read(offset, len(data)) != data:
                raise AssertionError(f"a write of {len(data)} bytes at {offset} did not read back")


def run_one(seed: Seed, mutations: list[Mutation], rng: random.Random, work: Path) -> Result:
    """Copy the seed, apply the mutations, exercise it under the deadline and the cap."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(seed.folder, work)
    apply(work, mutations)
    with deadline(DEADLINE_SECONDS), allocation_cap(ALLOCATION_CAP):
        return exercise(work, seed, rng)


# ------------------------------------------------------------------ the long profile
def soak(minutes: float, seed_value: int, out: Path) -> dict:
    seeds_dir = out / "seeds"
    if seeds_dir.exists():
        shutil.rmtree(seeds_dir)
    seeds = build_seeds(seeds_dir)
    stop = time.monotonic() + minutes * 60
    stats: Counter[str] = Counter()
    failures = []
    count = 0
    slowest = 0.0
    started = time.monotonic()
    while time.monotonic() < stop:
        rng = random.Random(f"{seed_value}:{count}")
        seed = rng.choice(seeds)
        mutations = mutations_for(rng, seed)
        t0 = time.monotonic()
        try:
            result = run_one(seed, mutations, rng, out / "work")
        except (Hang, MemoryBlowUp, Exception) as exc:  # noqa: BLE001 - every failure is recorded
            keep = out / f"failure-{count}"
            shutil.copytree(out / "work", keep, dirs_exist_ok=True)
            (keep / "mutations.json").write_text(json.dumps(
                {"seed": seed.name, "rng": f"{seed_value}:{count}", "error": repr(exc),
                 "mutations": [m.as_dict() for m in mutations]}, indent=2))
            failures.append({"case": count, "seed": seed.name, "error": repr(exc)[:300]})
            stats["failure"] += 1
            print(f"FAILURE {count} ({seed.name}): {exc!r}"[:400], flush=True)
        else:
            stats[f"open:{result.opened}"] += 1
            if result.checked:
                stats[f"check:{result.checked}:{result.check_exit}"] += 1
            if result.read:
                stats[f"read:{result.read}"] += 1
            if result.written:
                stats[f"write:{result.written}"] += 1
        slowest = max(slowest, time.monotonic() - t0)
        count += 1
        if count % 500 == 0:
            rate = count / (time.monotonic() - started)
            print(f"{count} images, {rate:.1f}/s, {stats['failure']} failures", flush=True)
    elapsed = time.monotonic() - started
    return {"images": count, "seconds": round(elapsed, 1), "per_second": round(count / elapsed, 1),
            "slowest_seconds": round(slowest, 2), "failures": failures,
            "outcomes": dict(sorted(stats.items())), "seed": seed_value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Long structure-aware fuzzing profile.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", type=Path, help="work folder (failures are kept there)")
    args = parser.parse_args(argv)
    quiet = logging.getLogger("vhdfs")  # warnings are expected by the thousand here
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    out = args.out or Path(tempfile.mkdtemp(prefix="vhdfs-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    report = soak(args.minutes, args.seed, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
