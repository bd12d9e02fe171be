"""What is inside a Linux initial RAM disk (initrd / initramfs): the names of its files.

An initrd is one or more "newc" cpio archives, one after another: often an uncompressed one
first (CPU microcode, read by the kernel before anything else) and then the main one,
compressed. Each archive ends with an entry named `TRAILER!!!`, and the next starts after
zero padding. The compressed part is decompressed as a stream with well-kept libraries
(the standard library's gzip, lzma (xz and legacy lzma) and bz2, and `zstandard`), so an
initrd is never held in memory whole, and reading stops as soon as the question is answered.

Only names are collected (file data is skipped), which is what "is hv_storvsc in there?" needs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from construct import Adapter, Bytes, Const, Select, Struct

from vhdfs.errors import VhdfsError
from vhdfs.guest.errors import GuestError
from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import Found

TRAILER = "TRAILER!!!"
NAME_LIMIT = 4096
SKIP_CHUNK = 1024 * 1024


class InitrdError(GuestError):
    """The file is not an initrd vhdfs can read (unknown compression, damaged archive)."""


class _Hex8(Adapter):
    """An 8-character ASCII hexadecimal field of a newc header."""

    def _decode(self, obj: bytes, context, path) -> int:
        try:
            return int(obj, 16)
        except ValueError:
            raise InitrdError(f"cpio header field {obj!r} is not hexadecimal") from None

    def _encode(self, obj: int, context, path) -> bytes:
        return b"%08X" % obj


def _hex8() -> _Hex8:
    return _Hex8(Bytes(8))


# "newc" (070701) and "crc" (070702) headers: 110 ASCII bytes, then the name (namesize bytes,
# NUL included), padded so that header + name is a multiple of 4; then the data, padded to 4.
NEWC_HEADER = Struct(
    "magic" / Select(Const(b"070701"), Const(b"070702")),
    "ino" / _hex8(), "mode" / _hex8(), "uid" / _hex8(), "gid" / _hex8(), "nlink" / _hex8(),
    "mtime" / _hex8(), "filesize" / _hex8(), "devmajor" / _hex8(), "devminor" / _hex8(),
    "rdevmajor" / _hex8(), "rdevminor" / _hex8(), "namesize" / _hex8(), "check" / _hex8(),
)
HEADER_SIZE = 110
CPIO_MAGICS = (b"070701", b"070702")
OLD_CPIO_MAGICS = (b"070707", b"\xc7\x71", b"\x71\xc7")


def _zstd_reader(raw: io.BufferedReader) -> io.RawIOBase:
    import zstandard  # imported here: only zstd initrds need it

    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


# magic bytes -> (name, stream opener)
COMPRESSIONS: list[tuple[bytes, str, Callable[[io.BufferedReader], io.RawIOBase | io.IOBase]]] = [
    (b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"\xfd7zXZ\x00", "xz", lambda raw: lzma.LZMAFile(raw, format=lzma.FORMAT_XZ)),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd_reader),
    (b"BZh", "bzip2", lambda raw: bz2.BZ2File(raw)),
    (b"\x5d\x00\x00", "lzma", lambda raw: lzma.LZMAFile(raw, format=lzma.FORMAT_ALONE)),
]
UNSUPPORTED = [(b"\x02\x21\x4c\x18", "lz4 (legacy)"), (b"\x04\x22\x4d\x18", "lz4"),
               (b"\x89LZO", "lzo")]


class GuestFileReader(io.RawIOBase):
    """A guest file as a Python stream, read through the chain chunk by chunk, on demand."""

    def __init__(self, found: Found) -> None:
        self._found = found
        self._size = int(found.file.info.meta.size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        volume = self._found.volume
        data = tsk_call(volume.image, f"{volume.describe()}: reading {self._found.path} at "
                        f"{self._pos}", self._found.file.read_random, self._pos, want)
        if not data:
            raise InitrdError(f"{self._found.path} ends at byte {self._pos} although its size "
                              f"is {self._size}; the file system may be damaged")
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str | None:
    """"hv_storvsc" for ".../hv_storvsc.ko.xz"; None for a path that is no kernel module."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)].replace("-", "_")
    return None


@dataclass
class InitrdContents:
    path: str
    segments: list[str] = field(default_factory=list)  # "cpio", "gzip cpio", ...
    names: set[str] = field(default_factory=set)  # every entry's path, without a leading "/"
    modules: set[str] = field(default_factory=set)  # kernel module names of the .ko files
    complete: bool = False  # False when reading stopped early (everything asked was found)

    def add(self, name: str) -> None:
        self.names.add(name)
        module = module_name(name)
        if module:
            self.modules.add(module)

    def describe(self) -> str:
        return " + ".join(self.segments) or "empty"


def _read_exact(stream, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise InitrdError(f"the archive ends inside {what}")
        data += chunk
    return data


def _skip(stream, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, SKIP_CHUNK))
        if not chunk:
            raise InitrdError("the archive ends inside a file's data")
        n -= len(chunk)


def _entries(stream) -> Iterator[str]:
    """Names of one cpio archive's entries, up to (not including) its trailer."""
    while True:
        raw = _read_exact(stream, HEADER_SIZE, "a cpio header")
        if raw[:6] not in CPIO_MAGICS:
            raise InitrdError(f"cpio header with magic {raw[:6]!r}: not a newc archive")
        header = NEWC_HEADER.parse(raw)
        if not 0 < header.namesize <= NAME_LIMIT:
            raise InitrdError(f"cpio entry name of {header.namesize} bytes")
        name_padded = (HEADER_SIZE + header.namesize + 3) // 4 * 4 - HEADER_SIZE
        name = _read_exact(stream, name_padded, "a cpio name")[:header.namesize]
        text = name.rstrip(b"\0").decode("utf-8", errors="surrogateescape")
        if text == TRAILER:
            return
        _skip(stream, (header.filesize + 3) // 4 * 4)
        yield text.removeprefix("./").lstrip("/")


def _skip_padding(raw: io.BufferedReader) -> bool:
    """Skip the zero bytes between archives; False at the end of the file."""
    while True:
        head = raw.peek(4096)
        if not head:
            return False
        stripped = head.lstrip(b"\0")
        raw.read(len(head) - len(stripped))
        if stripped:
            return True


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, ValueError)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def read_initrd(found: Found, stop_when: set[str] | None = None) -> InitrdContents:
    """Every entry name of the initrd at `found`; stops early once all the kernel modules
    named in `stop_when` were seen (the rest of the file is then not read at all)."""
    return read_initrd_stream(GuestFileReader(found), found.path, stop_when)


def read_initrd_stream(stream: io.RawIOBase, path: str, stop_when: set[str] | None = None
                       ) -> InitrdContents:
    """read_initrd over any binary stream (`path` names it in messages)."""
    contents = InitrdContents(path)
    raw = io.BufferedReader(stream, buffer_size=256 * 1024)
    try:
        complete = _read_segments(raw, contents, stop_when)
    except VhdfsError:
        raise
    except _decompression_errors() as exc:
        raise InitrdError(f"{path}: {type(exc).__name__}: {exc}") from None
    contents.complete = complete
    return contents


def _read_segments(raw: io.BufferedReader, contents: InitrdContents,
                   stop_when: set[str] | None) -> bool:
    """Plain cpio archives one after another, then perhaps one compressed part (whatever
    follows it is not read by the kernel either). False when stopped early: every module
    of `stop_when` was seen."""
    while _skip_padding(raw):
        magic = raw.peek(8)[:8]
        if magic[:6] in CPIO_MAGICS:
            contents.segments.append("cpio")
            if not _read_archive(raw, contents, stop_when):
                return False
            continue
        name, opener = _compression_of(magic)
        contents.segments.append(f"{name} cpio")
        stream = io.BufferedReader(opener(raw), buffer_size=256 * 1024)  # type: ignore[arg-type]
        return _read_compressed(stream, name, contents, stop_when)
    return True


def _compression_of(magic: bytes) -> tuple[str, Callable]:
    """The name and opener of the compression `magic` starts, or why it cannot be read."""
    if any(magic.startswith(m) for m in OLD_CPIO_MAGICS):
        raise InitrdError("an old-format (odc or binary) cpio archive; vhdfs reads the "
                          "newc format that every initramfs tool writes")
    match = next((c for c in COMPRESSIONS if magic.startswith(c[0])), None)
    if match is None:
        unsupported = next((n for p, n in UNSUPPORTED if magic.startswith(p)), None)
        if unsupported:
            raise InitrdError(f"compressed with {unsupported}, which vhdfs cannot read")
        raise InitrdError(f"unknown data (starts with {magic.hex()}): neither a cpio "
                          "archive nor a compression vhdfs knows")
    _, name, opener = match
    return name, opener


def _read_compressed(stream: io.BufferedReader, name: str, contents: InitrdContents,
                     stop_when: set[str] | None) -> bool:
    """A compressed part may hold several archives one after another."""
    while _skip_padding(stream):
        if stream.peek(6)[:6] not in CPIO_MAGICS:
            raise InitrdError(f"the {name} data does not hold a newc cpio archive")
        if not _read_archive(stream, contents, stop_when):
            return False
    return True


def _read_archive(stream: io.BufferedReader, contents: InitrdContents,
                  stop_when: set[str] | None) -> bool:
    """One archive's entries into `contents`; False once every module wanted was seen."""
    for entry in _entries(stream):
        contents.add(entry)
        if stop_when and stop_when <= contents.modules:
            return False
    return True
