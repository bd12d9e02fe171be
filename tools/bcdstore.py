"""Build a Boot Configuration Data (BCD) store, as bcdedit leaves it, for test disks.

A BCD store is a registry hive: `Objects\\{guid}\\Description` holds the object type and
`Objects\\{guid}\\Elements\\<element type>` holds each element in a value named `Element`.
The Windows Boot Manager object ({9dea862c-...}) names the default OS loader (element
23000003); each loader has its `device` (11000001) and `osdevice` (21000001), which say on
which partition Windows lives: for an MBR disk by disk signature and partition byte offset,
for a GPT disk by partition GUID.

The device element layout (88 bytes for a partition) follows what bcdedit writes and what the
public pybcd reverse-engineering documents: 16 bytes of options GUID, a 16-byte packet header
(type 6 = partition, 5 = boot device; flags; packet length), then the partition id (16 bytes:
MBR byte offset as u64, or the GPT partition GUID), a reserved u32, the table type (1 MBR, 0 GPT)
and the disk id (16 bytes: MBR signature as u32, or the GPT disk GUID), 16 reserved bytes.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from tools.regf import Key, Value, build_hive

BOOTMGR_GUID = "{9dea862c-5cdd-4e70-acc1-f32b344d4795}"
TYPE_BOOTMGR = 0x10100002
TYPE_OSLOADER = 0x10200003

DEVICE_BOOT = 5
DEVICE_PARTITION = 6
TABLE_GPT = 0
TABLE_MBR = 1


def device_mbr_partition(disk_signature: int, partition_offset: int) -> bytes:
    """Device element for an MBR partition: disk signature + partition start in bytes."""
    body = (struct.pack("<Q", partition_offset) + bytes(8) + struct.pack("<II", 0, TABLE_MBR)
            + struct.pack("<I", disk_signature) + bytes(12) + bytes(16))
    return bytes(16) + struct.pack("<IIII", DEVICE_PARTITION, 0, 16 + len(body), 0) + body


def device_gpt_partition(disk_guid: str, partition_guid: str) -> bytes:
    """Device element for a GPT partition, found by its unique partition GUID."""
    body = (uuid.UUID(partition_guid).bytes_le + struct.pack("<II", 0, TABLE_GPT)
            + uuid.UUID(disk_guid).bytes_le + bytes(16))
    return bytes(16) + struct.pack("<IIII", DEVICE_PARTITION, 0, 16 + len(body), 0) + body


def device_boot() -> bytes:
    """Device element "boot": the partition the boot manager was loaded from."""
    return bytes(16) + struct.pack("<IIII", DEVICE_BOOT, 0, 0x48, 0) + bytes(0x38)


@dataclass
class Loader:
    description: str
    device: bytes  # where winload.exe is read from
    osdevice: bytes  # the Windows partition
    path: str = "\\Windows\\system32\\winload.exe"
    systemroot: str = "\\Windows"


def loader_guid(index: int) -> str:
    return "{" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"vhdfs-test-loader-{index}")) + "}"


def _element(elements: Key, number: int, value: Value) -> None:
    elements.add(f"{number:08X}").values.append(value)


def build_bcd(loaders: list[Loader], *, default: int = 0, bootmgr_device: bytes | None = None) -> bytes:
    """A BCD hive with a boot manager whose default entry is `loaders[default]`."""
    root = Key("NewStoreRoot")
    description = root.add("Description")
    description.values += [Value.sz("KeyName", "BCD00000000"), Value.dword("System", 1),
                           Value.dword("TreatAsSystem", 1)]
    objects = root.add("Objects")
    guids = [loader_guid(i) for i in range(len(loaders))]

    bootmgr = objects.add(BOOTMGR_GUID)
    bootmgr.add("Description").values.append(Value.dword("Type", TYPE_BOOTMGR))
    elements = bootmgr.add("Elements")
    _element(elements, 0x11000001, Value.binary("Element", bootmgr_device or device_boot()))
    _element(elements, 0x12000004, Value.sz("Element", "Windows Boot Manager"))
    _element(elements, 0x12000005, Value.sz("Element", "en-US"))
    if loaders:
        _element(elements, 0x23000003, Value.sz("Element", guids[default]))
        _element(elements, 0x24000001, Value.multi_sz("Element", guids))
    _element(elements, 0x25000004, Value.binary("Element", struct.pack("<Q", 30)))

    for guid, loader in zip(guids, loaders, strict=True):
        obj = objects.add(guid)
        obj.add("Description").values.append(Value.dword("Type", TYPE_OSLOADER))
        elements = obj.add("Elements")
        _element(elements, 0x11000001, Value.binary("Element", loader.device))
        _element(elements, 0x12000002, Value.sz("Element", loader.path))
        _element(elements, 0x12000004, Value.sz("Element", loader.description))
        _element(elements, 0x21000001, Value.binary("Element", loader.osdevice))
        _element(elements, 0x22000002, Value.sz("Element", loader.systemroot))
    return build_hive(root, "\\Device\\HarddiskVolume1\\Boot\\BCD")


def build_mbr_bcd(disk_signature: int, windows_offset: int, *, extra_offsets: tuple[int, ...] = (),
                  default: int = 0) -> bytes:
    """The BCD of an MBR disk: one loader per Windows partition offset (the first is default)."""
    offsets = (windows_offset, *extra_offsets)
    loaders = [Loader(f"Windows Server (partition at {off})",
                      device_mbr_partition(disk_signature, off),
                      device_mbr_partition(disk_signature, off)) for off in offsets]
    return build_bcd(loaders, default=default)
