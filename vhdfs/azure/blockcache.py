"""Blocks of page blobs kept on local disk between commands: the optional persistent cache.

Off unless `--cache-dir DIR` (every command that opens an image) or VHDFS_CACHE_DIR names a
folder; VHDFS_CACHE_SIZE bounds it (default 1G). A blob's bytes are the same for as long as
its ETag is, so a block read once is good until the blob is written again, by any command.

Layout, under DIR/vhdfs-blocks-v1/ (nothing else in DIR is ever touched):

    <blob key>/<etag key>/b<block index, 12 hex digits>   one 256 KiB block (the last one of a
                                                           blob may be shorter)
    <blob key>/<etag key>/r<segment, 6 hex digits>        the page ranges of one 1 GiB segment
    <blob key>/<etag key>/.tmp-*                           entries being written

The blob key is a SHA-256 of the endpoint (scheme, host, account), the container and the
blob's name; the ETag key one of the ETag. Names are hashes, so no name of a blob, no query of
a URL and no SAS is ever in the cache. Folders are made 0700 and entries 0600: the entries
hold the disk's bytes.

Every entry is an ENTRY: what it is (block or ranges), the key of blob and ETag it belongs to,
its index, its length, the bytes, and a CRC-32C over all of that. An entry is written to a
temporary file in its folder and renamed into place, so a reader sees a whole entry or none;
one that is short, too long, damaged or belongs elsewhere fails its checks, is ignored (read
from the blob instead) and removed. Two commands that fill the cache at once write the same
bytes under the same names: whichever rename comes last wins, and both are whole. No locks.

When a blob is opened with another ETag than a cached folder of it has, that folder goes.

The size bound: a command looks at the folder's size each time it has written SIZE/8 and when
it closes its last blob; when the entries total more than SIZE it removes the least recently
used ones (a hit touches an entry's time) until they total at most 7/8 of SIZE, and the
leftovers of writers that died more than an hour ago. So after a command the cache holds at
most SIZE; while commands run, each may add up to SIZE/8 before it looks again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import stat
import sys
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
from construct import (
    Bytes,
    Checksum,
    Const,
    ConstructError,
    Int8ub,
    Int32ub,
    Int64ub,
    RawCopy,
    Struct,
    Terminated,
    this,
)

from vhdfs.azure.location import BlobLocation
from vhdfs.azure.stats import TRANSFER
from vhdfs.errors import UsageError
from vhdfs.units import parse_size

FORMAT_FOLDER = "vhdfs-blocks-v1"
DEFAULT_SIZE = 1 << 30
TRIM_EVERY = 8  # look at the folder's size after writing SIZE / TRIM_EVERY
TRIM_TO = 7 / 8  # of SIZE, so that trimming does not run again at once
STALE_TEMPORARY = 3600.0  # seconds: a writer that left a temporary file that long ago died
KIND_BLOCK = 1
KIND_RANGES = 2
ENV_FOLDER = "VHDFS_CACHE_DIR"
ENV_SIZE = "VHDFS_CACHE_SIZE"


def _crc32c(parts: tuple[bytes, bytes]) -> int:
    head, data = parts
    return google_crc32c.extend(google_crc32c.value(head), data)


ENTRY_HEAD = Struct(
    "magic" / Const(b"vhdfsblk"),
    "kind" / Int8ub,  # KIND_BLOCK, KIND_RANGES
    "key" / Bytes(32),  # of blob and ETag: an entry found in another folder is refused
    "index" / Int64ub,  # the block, or the page-range segment
    "length" / Int32ub,
)
HEAD_SIZE = ENTRY_HEAD.sizeof()
CHECKSUM_SIZE = 4
ENTRY = Struct(
    "head" / RawCopy(ENTRY_HEAD),
    "data" / Bytes(this.head.value.length),
    "checksum" / Checksum(Int32ub, _crc32c, lambda ctx: (ctx.head.data, ctx.data)),
    Terminated,
)


# ENTRY's layout, built and checked without copying a block's bytes around: construct's own
# build and parse of a 256 KiB entry cost 0.3 and 0.2 ms, more than writing and reading it
# (tests/azure/test_block_cache.py checks every entry written against ENTRY itself).
def _entry_parts(kind: int, key: bytes, index: int, data: bytes) -> list[bytes]:
    head = ENTRY_HEAD.build({"kind": kind, "key": key, "index": index, "length": len(data)})
    checksum = _crc32c((head, data)).to_bytes(CHECKSUM_SIZE, "big")
    return [head, data, checksum]


def _entry_data(raw: bytes, kind: int, key: bytes, index: int) -> bytes | None:
    """The bytes of an entry, or None if it is damaged, cut short or not this one."""
    if len(raw) < HEAD_SIZE + CHECKSUM_SIZE:
        return None
    try:
        head = ENTRY_HEAD.parse(raw[:HEAD_SIZE])
    except ConstructError:
        return None
    if head.kind != kind or head.key != key or head.index != index or \
            len(raw) != HEAD_SIZE + head.length + CHECKSUM_SIZE:
        return None
    data = raw[HEAD_SIZE:HEAD_SIZE + head.length]
    if _crc32c((raw[:HEAD_SIZE], data)) != int.from_bytes(raw[-CHECKSUM_SIZE:], "big"):
        return None
    return data


def _sha256(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).digest()


def blob_key(location: BlobLocation) -> str:
    scheme, host, account = location.endpoint
    return _sha256(scheme, host, account, location.container, location.blob).hex()[:32]


def _encode_ranges(ranges: list[tuple[int, int]]) -> bytes:
    values = array("Q", [value for pair in ranges for value in pair])
    if sys.byteorder == "little":
        values.byteswap()  # stored big-endian, as every other integer of an entry
    return values.tobytes()


def _decode_ranges(data: bytes) -> list[tuple[int, int]] | None:
    if len(data) % 16:
        return None
    values = array("Q")
    values.frombytes(data)
    if sys.byteorder == "little":
        values.byteswap()
    pairs = list(zip(values[::2], values[1::2], strict=True))
    if any(lo >= hi for lo, hi in pairs) or any(a[1] > b[0] for a, b in itertools.pairwise(pairs)):
        return None
    return pairs


class CacheFolder:
    """One cache folder and its size bound, shared by every blob a process opens."""

    def __init__(self, path: Path, limit: int, origin: str) -> None:
        self.path = path
        self.root = path / FORMAT_FOLDER
        self.limit = limit
        self.origin = origin  # what named the folder ("--cache-dir ", "VHDFS_CACHE_DIR=")
        self._written = 0  # bytes written since the last look at the size
        self._lock = threading.Lock()

    def store(self, location: BlobLocation, etag: str) -> BlobStore:
        """The entries of one blob at one ETag; other ETags' entries of the blob go."""
        blob_folder = self.root / blob_key(location)
        etag_key = _sha256(etag).hex()[:32]
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._check_owner()
            blob_folder.mkdir(mode=0o700, exist_ok=True)
            with os.scandir(blob_folder) as entries:
                stale = [e.path for e in entries if e.name != etag_key and e.is_dir()]
            for folder in stale:
                shutil.rmtree(folder, ignore_errors=True)
            (blob_folder / etag_key).mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.origin}{self.path}: cannot use it as the block cache "
                             f"({exc.strerror}); give a folder you can write, or leave the "
                             "cache off") from None
        key = _sha256(blob_key(location), etag)
        return BlobStore(self, blob_folder / etag_key, key)

    def _check_owner(self) -> None:
        """The CRC-32C finds damage, not forgery: entries anyone else could write (a folder
        made beforehand by another user in a shared place, or opened to others) could put
        any bytes into a disk we read. Such a folder is refused."""
        info = self.root.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or \
                info.st_mode & 0o022:
            raise UsageError(f"{self.origin}{self.path}: {self.root.name} there is not a folder "
                             "of yours that only you can write; remove it, or give another "
                             "folder")

    def wrote(self, size: int) -> None:
        with self._lock:
            self._written += size
            due = self._written >= self.limit // TRIM_EVERY
            if due:
                self._written = 0
        if due:
            self.trim()

    def finish(self) -> None:
        """At the close of a blob: keep the bound if this process wrote anything."""
        with self._lock:
            due, self._written = self._written > 0, 0
        if due:
            self.trim()

    def trim(self) -> None:
        """Remove least recently used entries until they total at most 7/8 of the bound."""
        now = time.time()
        found: list[tuple[float, int, str]] = []
        total = 0
        for folder in self._etag_folders():
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            info = entry.stat()
                        except OSError:
                            continue
                        if entry.name.startswith(".tmp-"):
                            if now - info.st_mtime > STALE_TEMPORARY:
                                _unlink(entry.path)
                            else:
                                total += info.st_size  # a writer's, not ours to remove
                            continue
                        found.append((info.st_mtime, info.st_size, entry.path))
                        total += info.st_size
            except OSError:
                continue
        if total <= self.limit:
            return
        target = int(self.limit * TRIM_TO)
        found.sort()
        for _, size, path in found:
            if total <= target:
                break
            _unlink(path)
            total -= size

    def _etag_folders(self) -> list[str]:
        out = []
        with contextlib.suppress(OSError), os.scandir(self.root) as blobs:
            for blob in blobs:
                with contextlib.suppress(OSError), os.scandir(blob.path) as etags:
                    out += [e.path for e in etags if e.is_dir()]
        return out


def _unlink(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_names = itertools.count()


@dataclass
class BlobStore:
    """The cached entries of one blob at one ETag."""

    folder_of: CacheFolder
    folder: Path
    key: bytes

    # ---------------------------------------------------------------- entries
    def _read(self, kind: int, name: str, index: int) -> bytes | None:
        path = self.folder / name
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        data = _entry_data(raw, kind, self.key, index)
        if data is None:
            _unlink(path)  # torn, damaged or not ours: the blob has the bytes
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: trimmed last
        return data

    def _write(self, kind: int, name: str, index: int, data: bytes) -> None:
        parts = _entry_parts(kind, self.key, index, data)
        size = sum(len(part) for part in parts)
        temporary = self.folder / f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_names)}"
        for attempt in (1, 2):
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:  # the folder was trimmed away by another command
                if attempt == 2:
                    return
                with contextlib.suppress(OSError):
                    self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            except OSError:
                return  # a cache that cannot be written is only slower
            try:
                try:
                    written = os.writev(fd, parts)
                finally:
                    os.close(fd)
                if written != size:
                    raise OSError("short write")
                os.rename(temporary, self.folder / name)
            except OSError:
                _unlink(temporary)
                return
            break
        self.folder_of.wrote(size)

    # ---------------------------------------------------------------- blocks and ranges
    def get(self, index: int) -> bytes | None:
        data = self._read(KIND_BLOCK, f"b{index:012x}", index)
        if data is not None:
            TRANSFER.add_cache_hit(len(data))
        return data

    def put(self, index: int, data: bytes) -> None:
        self._write(KIND_BLOCK, f"b{index:012x}", index, data)

    def get_ranges(self, segment: int) -> list[tuple[int, int]] | None:
        data = self._read(KIND_RANGES, f"r{segment:06x}", segment)
        return None if data is None else _decode_ranges(data)

    def put_ranges(self, segment: int, ranges: list[tuple[int, int]]) -> None:
        self._write(KIND_RANGES, f"r{segment:06x}", segment, _encode_ranges(ranges))

    def close(self) -> None:
        self.folder_of.finish()


# -------------------------------------------------------------------- which folder, if any
_chosen: tuple[Path, str] | None = None  # --cache-dir, for the rest of the process
_folders: dict[tuple[Path, int], CacheFolder] = {}
_folders_lock = threading.Lock()


def configure(folder: str | os.PathLike[str] | None) -> None:
    """`--cache-dir FOLDER` (None: the environment's VHDFS_CACHE_DIR, if any)."""
    global _chosen
    _chosen = (Path(os.path.abspath(folder)), "--cache-dir ") if folder else None


def _limit() -> int:
    text = os.environ.get(ENV_SIZE, "").strip()
    if not text:
        return DEFAULT_SIZE
    limit = parse_size(text, ENV_SIZE)
    if limit < 1 << 20:
        raise UsageError(f"{ENV_SIZE}={text}: the block cache needs at least 1M")
    return limit


def current() -> CacheFolder | None:
    """The cache folder in use, or None when the cache is off."""
    chosen = _chosen
    if chosen is None:
        text = os.environ.get(ENV_FOLDER, "").strip()
        if not text:
            return None
        # Absolute now: the mount daemon leaves the working folder.
        chosen = (Path(os.path.abspath(text)), f"{ENV_FOLDER}=")
    key = (chosen[0], _limit())
    with _folders_lock:
        folder = _folders.get(key)
        if folder is None:
            folder = _folders[key] = CacheFolder(key[0], key[1], chosen[1])
        return folder


def open_store(location: BlobLocation, etag: str) -> BlobStore | None:
    folder = current()
    return None if folder is None else folder.store(location, etag)


def _after_fork_in_child() -> None:
    global _folders_lock
    _folders_lock = threading.Lock()
    for folder in _folders.values():
        folder._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
