"""Which volume a Windows disk boots, and whether the boot manager's files are there.

BIOS (an MBR disk, Hyper-V generation 1): the BIOS starts the boot code of the active partition,
the *system partition*, which loads `\\bootmgr`; the boot manager reads its store `\\Boot\\BCD`.
UEFI (a GPT disk, generation 2): the firmware reads the EFI system partition (type
C12A7328-F81F-11D2-BA4B-00A0C93EC93B, FAT) and starts `\\EFI\\Microsoft\\Boot\\bootmgfw.efi`
through the boot entry Windows Setup left in the firmware's NVRAM; a new VM has no such entry,
so its firmware starts the removable-media default `\\EFI\\Boot\\bootx64.efi` (bcdboot writes
both, the same program). The boot manager reads `\\EFI\\Microsoft\\Boot\\BCD`.

The store's default entry names the *boot volume* (the one with `Windows\\System32\\winload.exe`
or `winload.efi`) by disk signature and partition offset (MBR) or by disk GUID and partition
GUID (GPT). It is read even when only one Windows volume exists: a store that names another
disk (a clone given a new signature or new GUIDs) does not boot. Finding a volume with
Windows\\System32 and its hives (as an inspection tool does) says where Windows is, not
whether the disk starts it; the store does.
"""

from __future__ import annotations

from vhdfs.guest.bcd import BcdDevice, BcdError, BcdStore, read_bcd
from vhdfs.guest.bootinfo import BootFile, BootInfo, has
from vhdfs.guest.efi import efi_application
from vhdfs.guest.errors import GuestError
from vhdfs.guest.files import read_all
from vhdfs.guest.paths import resolve
from vhdfs.guest.volumes import DiskVolumes, Volume

BCD_LIMIT = 16 * 1024 * 1024
WINDOWS_LOADERS = ("Windows/System32/winload.exe", "Windows/System32/winload.efi")
FAT = frozenset({"FAT12", "FAT16", "FAT32"})
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

UEFI_MANAGER = "EFI/Microsoft/Boot/bootmgfw.efi"
UEFI_STORE = "EFI/Microsoft/Boot/BCD"
UEFI_FALLBACK = "EFI/Boot/bootx64.efi"
BIOS_MANAGER = "bootmgr"
BIOS_STORE = "Boot/BCD"
BOOT_FILES = {
    "UEFI": ((UEFI_MANAGER, "boot manager"), (UEFI_STORE, "boot configuration"),
             (UEFI_FALLBACK, "firmware fallback")),
    "BIOS": ((BIOS_MANAGER, "boot manager"), (BIOS_STORE, "boot configuration")),
}
BCDBOOT = {
    "UEFI": "in the VM (or from Windows recovery media): mountvol S: /s, then bcdboot "
            "C:\\Windows /s S: /f UEFI (writes bootmgfw.efi, bootx64.efi and the BCD)",
    "BIOS": "in the VM (or from Windows recovery media): bcdboot C:\\Windows /s S: /f BIOS, S: "
            "being the active system partition (writes bootmgr and Boot\\BCD)",
}
NEW_ESP = ("in the VM or from Windows recovery media: diskpart, create partition efi size=100, "
           "format quick fs=fat32, assign letter=S; then bcdboot C:\\Windows /s S: /f UEFI")


def windows_path(path: str) -> str:
    """'EFI/Boot/bootx64.efi' -> '\\EFI\\Boot\\bootx64.efi'."""
    return "\\" + path.replace("/", "\\")


def windows_boot(disk: DiskVolumes) -> BootInfo | None:
    """None when no volume holds Windows."""
    os_volumes = [v for v in disk.with_fs() if v.fs_type == "NTFS"
                  and any(has(v, p) for p in WINDOWS_LOADERS)]
    if not os_volumes:
        return None
    info = BootInfo("windows", [v.number for v in os_volumes])
    scheme = disk.table.scheme
    if scheme == "gpt":
        info.firmware = "UEFI"
        system = _efi_system_partition(disk, info)
    elif scheme == "mbr":
        info.firmware = "BIOS"
        system = _active_partition(disk, info)
    else:
        info.problem("the disk has no partition table; Windows needs an MBR disk (BIOS, "
                     "generation 1) or a GPT disk (UEFI, generation 2) with a system partition")
        return info
    if system is None or not _system_readable(system, info):
        return info
    store = _boot_files(system, info)
    if store is not None:
        _windows_from_store(disk, store, system, os_volumes, info)
    return info


def _efi_system_partition(disk: DiskVolumes, info: BootInfo) -> Volume | None:
    esps = [v for v in disk.volumes if v.partition and v.partition.is_efi_system]
    if not esps:
        stray = [v for v in disk.with_fs() if has(v, UEFI_STORE) or has(v, UEFI_MANAGER)]
        if stray:
            v = stray[0]
            info.problem(f"the GPT disk has no EFI system partition: {v.describe()} holds "
                         f"\\EFI\\Microsoft\\Boot, but its partition type is {v.type_name} "
                         f"({v.partition.type_code}), so UEFI firmware does not look at it",
                         f"make it the EFI system partition: sgdisk --typecode={v.number}:EF00 "
                         f"on the raw disk (or diskpart: select partition {v.number}, set "
                         f"id={ESP_TYPE.lower()})")
        else:
            info.problem(f"the GPT disk has no EFI system partition (type {ESP_TYPE}), so UEFI "
                         "firmware finds no boot manager", NEW_ESP)
        return None
    chosen = next((v for v in esps if has(v, UEFI_STORE)), esps[0])
    if len(esps) > 1:
        info.warnings.append(f"the disk has {len(esps)} EFI system partitions (volumes "
                             f"{', '.join(str(v.number) for v in esps)}); vhdfs reads volume "
                             f"{chosen.number}, which holds the BCD, but the firmware may "
                             "start another one")
    return chosen


def _active_partition(disk: DiskVolumes, info: BootInfo) -> Volume | None:
    systems = [v for v in disk.volumes if v.bootable]
    if not systems:
        info.problem("no partition is marked active, so the BIOS boot code starts nothing",
                     "mark the system partition active (for example sfdisk --activate DISK N "
                     "on the raw disk, or diskpart: select partition N, active)")
        return None
    if len(systems) > 1:
        info.problem("partitions " + ", ".join(str(v.number) for v in systems) +
                     " are all marked active; only one may be",
                     "clear the flag on all but the system partition (sfdisk --activate DISK N "
                     "sets it on partition N alone)")
        return None
    return systems[0]


def _system_readable(system: Volume, info: BootInfo) -> bool:
    info.system_volume = system.number
    if info.firmware == "UEFI":
        what = "the EFI system partition"
        if system.fs is not None and system.fs_type not in FAT:
            info.problem(f"{what} {system.describe()} is not FAT: UEFI firmware reads only FAT "
                         "(Windows uses FAT32) and cannot open it",
                         "in the VM or from Windows recovery media: format it (diskpart: select "
                         "partition N, format quick fs=fat32, assign letter=S), then bcdboot "
                         "C:\\Windows /s S: /f UEFI")
            return False
    else:
        what = "the system partition (the active one)"
    if system.fs is None:
        info.problem(f"{what} (volume {system.number}) has no readable file system: "
                     f"{system.error}", BCDBOOT[info.firmware])
        return False
    return True


def _boot_files(system: Volume, info: BootInfo) -> BcdStore | None:
    """Note each file the firmware and boot manager need; the store, read, or None."""
    fix = BCDBOOT[info.firmware]
    where = ("the EFI system partition " if info.firmware == "UEFI" else "the system partition ") \
        + system.describe()
    store_found, store_path = None, ""
    for path, role in BOOT_FILES[info.firmware]:
        found = resolve(system, path)
        if found is not None and found.is_dir:
            found = None
        efi = efi_application(found) if found is not None and path.endswith(".efi") else None
        info.boot_files.append(BootFile(windows_path(path), system.number, found is not None,
                                        role, efi))
        if found is None:
            info.problem(f"{where} has no {windows_path(path)} ({_role_text(role)})", fix)
        elif efi is not None and efi.problem:
            info.problem(f"{where}: {efi.problem}, so the firmware does not start it", fix)
        if role == "boot configuration":
            store_found, store_path = found, path
    if store_found is None:
        return None
    try:
        return read_bcd(read_all(store_found, BCD_LIMIT))
    except (BcdError, GuestError) as exc:
        info.problem(f"{windows_path(store_path)} on volume {system.number}: {exc}", fix)
        return None


def _role_text(role: str) -> str:
    return {"boot manager": "the Windows Boot Manager",
            "boot configuration": "the boot configuration store",
            "firmware fallback": "the default loader a new VM's firmware starts: Azure creates "
                                 "the VM without Windows's firmware boot entry, so without it "
                                 "the VM does not boot"}[role]


def device_volume(disk: DiskVolumes, device: BcdDevice, system: Volume) -> Volume | None:
    """The volume of this disk a BCD device element names ("boot": the system volume)."""
    if device.kind == "boot":
        return system
    if device.kind != "partition":
        return None
    if device.scheme == "mbr":
        if disk.table.scheme != "mbr" or disk.table.disk_signature != device.disk_signature:
            return None
        return next((v for v in disk.volumes if v.start == device.partition_offset), None)
    return next((v for v in disk.volumes if v.partition and v.partition.guid
                 == device.partition_guid), None)


def _names_another_disk(disk: DiskVolumes, device: BcdDevice) -> str | None:
    """Why the device names a partition of another disk than this one; None when it does not."""
    table = disk.table
    if device.scheme == "mbr":
        if table.scheme == "mbr" and table.disk_signature == device.disk_signature:
            return None
        mine = f"0x{table.disk_signature:08X}" if table.scheme == "mbr" \
            and table.disk_signature is not None else f"none (a {table.scheme.upper()} disk)"
        return (f"a partition of the MBR disk with signature 0x{device.disk_signature:08X}, but "
                f"this disk's signature is {mine}")
    if table.scheme == "gpt" and (table.disk_guid or "").upper() == (device.disk_guid or ""):
        return None
    mine = table.disk_guid if table.scheme == "gpt" else f"none (an {table.scheme.upper()} disk)"
    return (f"partition {device.partition_guid} of the GPT disk {device.disk_guid}, but this "
            f"disk's GUID is {mine}")


def _store_fix(info: BootInfo) -> str:
    return (f"{BCDBOOT[info.firmware]}; it rewrites the store for this disk (or bcdedit /set "
            "{default} device partition=C: and bcdedit /set {default} osdevice partition=C:)")


def _windows_from_store(disk: DiskVolumes, store: BcdStore, system: Volume,
                        os_volumes: list[Volume], info: BootInfo) -> None:
    where = f"the BCD on volume {system.number}"
    loader = store.default_loader
    if loader is None:
        info.problem(f"{where} has no default boot entry", "in the VM: bcdedit /default {ID} "
                     "(bcdedit /enum lists the entries), or " + BCDBOOT[info.firmware])
        return
    device = loader.osdevice
    entry = f"default entry \"{loader.description or loader.guid}\""
    if device is None or device.kind not in ("partition", "boot"):
        info.problem(f"{where}: {entry} boots {device.kind if device else 'no device'}, not a "
                     "partition of this disk", _store_fix(info))
        return
    other = _names_another_disk(disk, device) if device.kind == "partition" else None
    if other is not None:
        fix = _store_fix(info)
        if device.scheme == "gpt" and device_volume(disk, device, system) is not None:
            fix += (f"; or, if a tool gave the disk a new GUID, put the old one back: sgdisk "
                    f"--disk-guid={device.disk_guid} on the raw disk")
        info.problem(f"{where}: {entry} boots {other}", fix)
        return
    info.loader = loader
    target = device_volume(disk, device, system)
    if target is None:
        info.problem(f"{where}: {entry} boots the {device.describe()}, where this disk has no "
                     f"partition ({_partitions_of(disk)})", _store_fix(info))
        return
    info.boot_volume = target.number
    info.how = f"{where}: {entry} boots volume {target.number}"
    if target not in os_volumes:
        info.problem(f"{where}: {entry} boots {target.describe()}, which has no "
                     "Windows\\System32\\winload.exe or winload.efi", _store_fix(info))


def _partitions_of(disk: DiskVolumes) -> str:
    """This disk's partitions as a BCD names them: GUIDs on GPT, offsets on MBR."""
    if disk.table.scheme == "gpt":
        return "its partitions are " + ", ".join(
            f"{v.number}: {v.partition.guid}" for v in disk.volumes if v.partition)
    return "its partitions start at " + ", ".join(
        f"{v.number}: {v.start}" for v in disk.volumes if v.partition)
