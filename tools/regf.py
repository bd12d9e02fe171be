"""Write Windows registry hive files (regf) for test fixtures.

No well-kept library writes a hive from nothing (python-registry only reads; hivex edits an
existing hive), so the fixtures build their BCD store with this small writer. It produces what
Windows itself writes for a small hive: a 4 KiB base block with its XOR checksum, one hive bin,
key nodes (nk) with ASCII names, values (vk) with their data inline or in a data cell, value
lists, "lf" subkey lists sorted by upper-case name, and one security cell (sk) shared by all
keys. The reading side of vhdfs uses python-registry, so every hive made here is checked by an
independent parser in the tests.

Layout references: the "Windows registry file format specification" by Maxim Suhanov and the
structures python-registry parses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

REG_SZ = 1
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7

BASE_BLOCK_SIZE = 4096
HBIN_HEADER_SIZE = 32
KEY_HIVE_ENTRY = 0x0004
KEY_NO_DELETE = 0x0008
KEY_COMP_NAME = 0x0020
VALUE_COMP_NAME = 0x0001
NO_OFFSET = 0xFFFFFFFF
# A Windows FILETIME (2012-06-07); fixed so the same inputs give the same bytes.
FIXED_FILETIME = 129835008000000000


@dataclass
class Value:
    name: str
    type: int
    data: bytes

    @classmethod
    def sz(cls, name: str, text: str) -> Value:
        return cls(name, REG_SZ, (text + "\0").encode("utf-16-le"))

    @classmethod
    def multi_sz(cls, name: str, items: list[str]) -> Value:
        return cls(name, REG_MULTI_SZ, ("\0".join(items) + "\0\0").encode("utf-16-le"))

    @classmethod
    def dword(cls, name: str, number: int) -> Value:
        return cls(name, REG_DWORD, struct.pack("<I", number))

    @classmethod
    def binary(cls, name: str, data: bytes) -> Value:
        return cls(name, REG_BINARY, bytes(data))


@dataclass
class Key:
    name: str
    values: list[Value] = field(default_factory=list)
    subkeys: list[Key] = field(default_factory=list)

    def add(self, name: str) -> Key:
        key = Key(name)
        self.subkeys.append(key)
        return key


def _name_bytes(name: str) -> tuple[bytes, bool]:
    """The stored form of a name: ASCII ("compressed") when possible, else UTF-16LE."""
    try:
        return name.encode("ascii"), True
    except UnicodeEncodeError:
        return name.encode("utf-16-le"), False


class _Cells:
    """Cells of one hive bin; offsets are relative to the start of the hive bins data."""

    def __init__(self) -> None:
        self.buf = bytearray(HBIN_HEADER_SIZE)

    def alloc(self, payload: bytes) -> int:
        size = -(-(4 + len(payload)) // 8) * 8
        offset = len(self.buf)
        self.buf += struct.pack("<i", -size) + payload + bytes(size - 4 - len(payload))
        return offset

    def patch(self, offset: int, at: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, self.buf, offset + 4 + at, *values)


_SECURITY_DESCRIPTOR = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 0)  # self-relative, null DACL


def _write_security(cells: _Cells) -> int:
    head = struct.pack("<2sHIIII", b"sk", 0, 0, 0, 0, len(_SECURITY_DESCRIPTOR))
    offset = cells.alloc(head + _SECURITY_DESCRIPTOR)
    cells.patch(offset, 4, "<II", offset, offset)  # the only sk: its list links to itself
    return offset


def _write_value(cells: _Cells, value: Value) -> int:
    name, ascii_name = _name_bytes(value.name)
    if len(value.data) <= 4:
        size_field = len(value.data) | 0x80000000  # data lives in the offset field
        data_field = int.from_bytes(value.data.ljust(4, b"\0"), "little")
    else:
        if len(value.data) > 16344:
            raise ValueError(f"value {value.name!r}: data over 16344 bytes needs big-data cells")
        size_field = len(value.data)
        data_field = cells.alloc(value.data)
    flags = VALUE_COMP_NAME if ascii_name else 0
    return cells.alloc(struct.pack("<2sHIIIHH", b"vk", len(name), size_field, data_field,
                                   value.type, flags, 0) + name)


def _write_key(cells: _Cells, key: Key, parent: int, security: int, root: bool) -> int:
    name, ascii_name = _name_bytes(key.name)
    flags = (KEY_COMP_NAME if ascii_name else 0) | (KEY_HIVE_ENTRY | KEY_NO_DELETE if root else 0)
    node = cells.alloc(struct.pack("<2sHQI", b"nk", flags, FIXED_FILETIME, 0) + bytes(0x4C - 16)
                       + name)
    cells.patch(node, 0x48, "<HH", len(name), 0)

    value_offsets = [_write_value(cells, v) for v in key.values]
    value_list = cells.alloc(struct.pack(f"<{len(value_offsets)}I", *value_offsets)) \
        if value_offsets else NO_OFFSET

    children = sorted(key.subkeys, key=lambda k: k.name.upper())
    child_offsets = [_write_key(cells, child, node, security, False) for child in children]
    if child_offsets:
        entries = b"".join(struct.pack("<I", off) + _name_bytes(child.name)[0][:4].ljust(4, b"\0")
                           for off, child in zip(child_offsets, children, strict=True))
        subkey_list = cells.alloc(struct.pack("<2sH", b"lf", len(children)) + entries)
    else:
        subkey_list = NO_OFFSET

    def stored_len(text: str) -> int:
        raw, is_ascii = _name_bytes(text)
        return len(raw) * 2 if is_ascii else len(raw)  # lengths count UTF-16 bytes

    cells.patch(node, 0x10, "<IIIIIIIIIIIII",
                NO_OFFSET if root else parent,
                len(children), 0, subkey_list, NO_OFFSET,
                len(value_offsets), value_list, security, NO_OFFSET,
                max((stored_len(c.name) for c in children), default=0), 0,
                max((stored_len(v.name) for v in key.values), default=0),
                max((len(v.data) for v in key.values), default=0))
    return node


def build_hive(root: Key, file_name: str = "") -> bytes:
    """The bytes of a hive file whose root key is `root`."""
    cells = _Cells()
    security = _write_security(cells)
    # the security cell's reference count: every key points at it
    count = 1
    pending = list(root.subkeys)
    while pending:
        key = pending.pop()
        count += 1
        pending.extend(key.subkeys)
    cells.patch(security, 12, "<I", count)
    root_offset = _write_key(cells, root, NO_OFFSET, security, True)

    used = len(cells.buf)
    hbin_size = -(-used // 4096) * 4096
    if hbin_size - used >= 8:  # the rest of the bin is one free cell
        cells.buf += struct.pack("<i", hbin_size - used) + bytes(hbin_size - used - 4)
    else:
        cells.buf += bytes(hbin_size - used)
    struct.pack_into("<4sIIIIQI", cells.buf, 0, b"hbin", 0, hbin_size, 0, 0, FIXED_FILETIME, 0)

    base = bytearray(BASE_BLOCK_SIZE)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, FIXED_FILETIME, 1, 3, 0, 1,
                     root_offset, hbin_size, 1)
    encoded_name = file_name.encode("utf-16-le")[:64]
    base[0x30:0x30 + len(encoded_name)] = encoded_name
    checksum = 0
    for (word,) in struct.iter_unpack("<I", base[:0x1FC]):
        checksum ^= word
    checksum = {0: 1, 0xFFFFFFFF: 0xFFFFFFFE}.get(checksum, checksum)
    struct.pack_into("<I", base, 0x1FC, checksum)
    return bytes(base) + bytes(cells.buf)
