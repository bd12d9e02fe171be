"""Read a Windows Boot Configuration Data store (Boot\\BCD): which partition Windows boots from.

The store is a registry hive, read with python-registry. What we need from it:
  Objects\\{9dea862c-5cdd-4e70-acc1-f32b344d4795}     the Windows Boot Manager
      Elements\\23000003 Element (REG_SZ)              the default OS loader's GUID
  Objects\\{loader}\\Elements\\21000001 Element        osdevice: the Windows partition
                          \\11000001 Element        device: where winload is read from
                          \\12000004 Element        description
A partition device element (REG_BINARY) holds, after a 16-byte options GUID and a 16-byte packet
header (type 6 = partition, 5 = "boot", the partition the boot manager came from), the partition
id (MBR: byte offset as u64; GPT: partition GUID), the table type (1 MBR, 0 GPT) and the disk id
(MBR: disk signature as u32; GPT: disk GUID). This layout is what bcdedit writes; the public pybcd
reverse-engineering documents it the same way.
"""

from __future__ import annotations

import io
import struct
import uuid
from dataclasses import dataclass, field

from Registry import Registry

BOOTMGR_GUID = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
ELEMENT_DEVICE = "11000001"
ELEMENT_PATH = "12000002"
ELEMENT_DESCRIPTION = "12000004"
ELEMENT_OSDEVICE = "21000001"
ELEMENT_SYSTEMROOT = "22000002"
ELEMENT_DEFAULT = "23000003"
ELEMENT_DISPLAY_ORDER = "24000001"
DEVICE_BOOT = 5
DEVICE_PARTITION = 6
TABLE_GPT = 0
TABLE_MBR = 1


class BcdError(ValueError):
    """The store is not a hive, or lacks what a boot manager needs."""


@dataclass(frozen=True)
class BcdDevice:
    kind: str  # "partition", "boot", or "other (type N)"
    scheme: str = ""  # "mbr" or "gpt" for partitions
    partition_offset: int | None = None  # MBR
    disk_signature: int | None = None  # MBR
    partition_guid: str | None = None  # GPT, upper case
    disk_guid: str | None = None  # GPT, upper case

    def describe(self) -> str:
        if self.kind != "partition":
            return self.kind
        if self.scheme == "mbr":
            return (f"partition at offset {self.partition_offset} of the disk with signature "
                    f"0x{self.disk_signature:08X}")
        return f"partition {self.partition_guid} of the disk {self.disk_guid}"


@dataclass
class BcdLoader:
    guid: str
    description: str = ""
    device: BcdDevice | None = None
    osdevice: BcdDevice | None = None
    path: str = ""
    systemroot: str = ""


@dataclass
class BcdStore:
    default: str | None = None  # GUID of the default loader, lower case with braces
    display_order: list[str] = field(default_factory=list)
    loaders: dict[str, BcdLoader] = field(default_factory=dict)

    @property
    def default_loader(self) -> BcdLoader | None:
        return self.loaders.get(self.default or "")


def decode_device(raw: bytes) -> BcdDevice:
    if len(raw) < 0x20:
        raise BcdError(f"device element of {len(raw)} bytes is too short")
    kind, _flags, _length, _reserved = struct.unpack_from("<IIII", raw, 0x10)
    if kind == DEVICE_BOOT:
        return BcdDevice("boot")
    if kind != DEVICE_PARTITION:
        return BcdDevice(f"other (type {kind})")
    if len(raw) < 0x48:
        raise BcdError(f"partition device element of {len(raw)} bytes is too short")
    partition_id = raw[0x20:0x30]
    table = struct.unpack_from("<I", raw, 0x34)[0]
    disk_id = raw[0x38:0x48]
    if table == TABLE_MBR:
        return BcdDevice("partition", "mbr", partition_offset=struct.unpack_from("<Q", partition_id)[0],
                         disk_signature=struct.unpack_from("<I", disk_id)[0])
    if table == TABLE_GPT:
        return BcdDevice("partition", "gpt",
                         partition_guid=str(uuid.UUID(bytes_le=partition_id)).upper(),
                         disk_guid=str(uuid.UUID(bytes_le=disk_id)).upper())
    raise BcdError(f"partition device element names table type {table} (neither MBR nor GPT)")


def _element(elements, name: str):
    for key in elements.subkeys():
        if key.name().lower() == name.lower():
            return key.value("Element").value()
    return None


def read_bcd(data: bytes) -> BcdStore:
    """Parse a BCD hive; raises BcdError with the reason when it is not one."""
    try:
        hive = Registry.Registry(io.BytesIO(data))
        objects = hive.root().subkey("Objects")
        store = BcdStore()
        for obj in objects.subkeys():
            guid = obj.name().lower()
            elements = obj.subkey("Elements")
            if guid == BOOTMGR_GUID:
                default = _element(elements, ELEMENT_DEFAULT)
                store.default = default.lower() if isinstance(default, str) else None
                order = _element(elements, ELEMENT_DISPLAY_ORDER) or []
                store.display_order = [g.lower() for g in order if g]
                continue
            osdevice = _element(elements, ELEMENT_OSDEVICE)
            if osdevice is None:
                continue  # not an OS loader (resume, memory test, settings objects)
            device = _element(elements, ELEMENT_DEVICE)
            store.loaders[guid] = BcdLoader(
                guid, str(_element(elements, ELEMENT_DESCRIPTION) or ""),
                decode_device(device) if isinstance(device, bytes) else None,
                decode_device(osdevice), str(_element(elements, ELEMENT_PATH) or ""),
                str(_element(elements, ELEMENT_SYSTEMROOT) or ""))
    except BcdError:
        raise
    except Exception as exc:  # python-registry raises many kinds on a damaged hive
        raise BcdError(f"not a readable registry hive ({type(exc).__name__}: {exc})") from None
    return store
