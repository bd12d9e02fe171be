"""Offline Windows registry hives (SYSTEM, SOFTWARE) read from a guest volume with python-registry.

The hive files live in `Windows\\System32\\config`. An offline SYSTEM hive has no
`CurrentControlSet`: that is a link the running kernel makes, to the control set that
`Select\\Current` names (`ControlSet001`, ...). python-registry needs the whole file in memory
(it parses a bytes buffer), so a hive is read once, whole, and kept for every question asked.

A hive whose two sequence numbers in the base block differ was being written when the system
stopped: its newest changes may still be in the transaction logs (SYSTEM.LOG1/LOG2), which no
offline reader applies here, so what it says may be stale (`Hive.dirty`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from construct import Const, Int32ul, Struct
from Registry import Registry

from vhdfs.guest.errors import GuestError
from vhdfs.guest.files import read_all
from vhdfs.guest.paths import Found, resolve
from vhdfs.guest.volumes import Volume

HIVE_LIMIT = 512 * 1024 * 1024
CONFIG_DIR = "Windows/System32/config"

# The start of a hive's base block ("regf"): the two sequence numbers are equal when the
# hive file is consistent on its own.
BASE_BLOCK_HEAD = Struct(
    "signature" / Const(b"regf"),
    "primary_sequence" / Int32ul,
    "secondary_sequence" / Int32ul,
)


class HiveError(GuestError):
    """A hive is missing, not a hive, or lacks a key the question needs."""


@dataclass
class Hive:
    name: str  # "SYSTEM", "SOFTWARE"
    where: str  # 'volume 2 (NTFS "Windows"): /Windows/System32/config/SYSTEM' for messages
    registry: Registry.Registry
    dirty: bool

    def key(self, path: str) -> Any | None:
        """The key at `path` (backslash-separated, from the hive's root), None when absent."""
        try:
            return self.registry.open(path)
        except Registry.RegistryKeyNotFoundException:
            return None
        except Exception as exc:  # python-registry raises many kinds on a damaged hive
            raise HiveError(f"{self.where}: key {path}: {type(exc).__name__}: {exc}") from None

    def value(self, path: str, name: str, default: Any = None) -> Any:
        """The data of value `name` of key `path`, `default` when the key or value is absent."""
        key = self.key(path)
        if key is None:
            return default
        try:
            return key.value(name).value()
        except Registry.RegistryValueNotFoundException:
            return default
        except Exception as exc:
            raise HiveError(f"{self.where}: {path}\\{name}: {type(exc).__name__}: {exc}") from None

    def values(self, path: str) -> dict[str, Any]:
        key = self.key(path)
        if key is None:
            return {}
        try:
            return {v.name(): v.value() for v in key.values()}
        except Exception as exc:
            raise HiveError(f"{self.where}: {path}: {type(exc).__name__}: {exc}") from None

    def subkeys(self, path: str) -> list[str]:
        key = self.key(path)
        if key is None:
            return []
        try:
            return [k.name() for k in key.subkeys()]
        except Exception as exc:
            raise HiveError(f"{self.where}: {path}: {type(exc).__name__}: {exc}") from None


def parse_hive(data: bytes, name: str, where: str) -> Hive:
    """A hive from its bytes; HiveError with the reason when it is not one."""
    try:
        head = BASE_BLOCK_HEAD.parse(data[:BASE_BLOCK_HEAD.sizeof()])
    except Exception:
        raise HiveError(f"{where}: not a registry hive (no regf base block; "
                        f"{len(data)} bytes)") from None
    try:
        registry = Registry.Registry(io.BytesIO(data))
        registry.root()
    except Exception as exc:
        raise HiveError(f"{where}: not a readable registry hive ({type(exc).__name__}: "
                        f"{exc})") from None
    return Hive(name, where, registry, head.primary_sequence != head.secondary_sequence)


def open_hive(volume: Volume, name: str) -> Hive | None:
    """`Windows\\System32\\config\\<name>` of `volume`, None when the file does not exist."""
    found: Found | None = resolve(volume, f"{CONFIG_DIR}/{name}")
    if found is None or found.is_dir:
        return None
    where = f"{volume.describe()}: {found.path}"
    return parse_hive(read_all(found, HIVE_LIMIT), name, where)


def current_control_set(system: Hive) -> str:
    """The control set `CurrentControlSet` stands for: `Select\\Current`, as the kernel does."""
    current = system.value("Select", "Current")
    if not isinstance(current, int) or not 0 < current < 1000:
        raise HiveError(f"{system.where}: Select\\Current is {current!r}, not a control set "
                        "number; the hive is damaged or not a SYSTEM hive")
    name = f"ControlSet{current:03d}"
    if system.key(name) is None:
        raise HiveError(f"{system.where}: Select\\Current names {name}, which the hive lacks")
    return name
