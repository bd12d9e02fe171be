"""Which volume a disk boots: the Windows volume the boot manager starts, or the Linux root.

Windows: the system volume (the active MBR partition, or the EFI system partition on GPT) holds
the boot manager and its store (bootmgr + Boot\\BCD, or EFI\\Microsoft\\Boot\\bootmgfw.efi + BCD);
the boot volume holds Windows\\System32\\winload.exe (winload.efi for UEFI). The store's default
entry names the boot volume's partition (by disk signature and offset, or partition GUID); it is
read even when only one Windows volume exists, since a store that points elsewhere (a cloned disk
with a new signature) does not boot.

Linux: the root file system the boot loader passes to the kernel (grub.cfg `root=UUID=...`,
`PARTUUID=`, `LABEL=` or `/dev/sdXN`), else the one grub's `search --fs-uuid` sets as root, else
the single volume whose own /etc/fstab mounts it as `/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vhdfs.guest.bcd import BcdDevice, BcdError, BcdLoader, BcdStore, read_bcd
from vhdfs.guest.errors import GuestError
from vhdfs.guest.files import read_all, read_text
from vhdfs.guest.paths import glob, resolve
from vhdfs.guest.volumes import DiskVolumes, Volume

BCD_LIMIT = 16 * 1024 * 1024


@dataclass
class BootInfo:
    os: str  # "windows" or "linux"
    os_volumes: list[int]  # volumes that hold an operating system
    boot_volume: int | None = None
    system_volume: int | None = None  # Windows: where the boot manager and BCD live
    how: str = ""  # how the boot volume was decided, in words
    loader: BcdLoader | None = None  # Windows: the BCD's default entry
    problems: list[str] = field(default_factory=list)  # each one stops the disk from booting
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"os": self.os, "os_volumes": self.os_volumes, "boot_volume": self.boot_volume,
                "system_volume": self.system_volume, "how": self.how, "problems": self.problems,
                "warnings": self.warnings}


def _has(volume: Volume, path: str) -> bool:
    return volume.fs is not None and resolve(volume, path) is not None


# ---------------------------------------------------------------------------- Windows
def windows_boot(disk: DiskVolumes) -> BootInfo | None:
    """None when no volume holds Windows."""
    loaders = ("Windows/System32/winload.exe", "Windows/System32/winload.efi")
    os_volumes = [v for v in disk.with_fs() if v.fs_type == "NTFS"
                  and any(_has(v, p) for p in loaders)]
    if not os_volumes:
        return None
    info = BootInfo("windows", [v.number for v in os_volumes])
    scheme = disk.table.scheme
    if scheme == "gpt":
        systems = [v for v in disk.volumes if v.partition and v.partition.is_efi_system]
        store_path, manager = "EFI/Microsoft/Boot/BCD", "EFI/Microsoft/Boot/bootmgfw.efi"
        if not systems:
            info.problems.append("the GPT disk has no EFI system partition, so UEFI firmware "
                                 "finds no boot manager; create one with bcdboot C:\\Windows /f UEFI")
            return info
    elif scheme == "mbr":
        systems = [v for v in disk.volumes if v.bootable]
        store_path, manager = "Boot/BCD", "bootmgr"
        if not systems:
            info.problems.append("no partition is marked active, so the BIOS boot code starts "
                                 "nothing; mark the system partition active (for example "
                                 "sfdisk --activate DISK N on the raw disk, or diskpart: active)")
            return info
        if len(systems) > 1:
            info.problems.append("partitions " + ", ".join(str(v.number) for v in systems) +
                                 " are all marked active; only one may be")
            return info
    else:
        info.problems.append("the disk has no partition table; Windows needs an MBR or GPT disk "
                             "with a system partition")
        return info
    system = systems[0]
    info.system_volume = system.number
    if system.fs is None:
        info.problems.append(f"the system partition (volume {system.number}) has no readable "
                             f"file system: {system.error}")
        return info
    if not _has(system, manager):
        info.problems.append(f"the system partition {system.describe()} has no "
                             f"{manager.replace('/', chr(92))}; run bcdboot C:\\Windows on the VM")
    found = resolve(system, store_path)
    if found is None:
        info.problems.append(f"the system partition {system.describe()} has no "
                             f"{store_path.replace('/', chr(92))} (the boot configuration store); "
                             "run bcdboot C:\\Windows on the VM")
        return info
    try:
        store = read_bcd(read_all(found, BCD_LIMIT))
    except (BcdError, GuestError) as exc:
        info.problems.append(f"{store_path.replace('/', chr(92))} on volume {system.number}: {exc}")
        return info
    _windows_from_store(disk, store, system, os_volumes, info)
    return info


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


def _windows_from_store(disk: DiskVolumes, store: BcdStore, system: Volume,
                        os_volumes: list[Volume], info: BootInfo) -> None:
    where = f"the BCD on volume {system.number}"
    loader = store.default_loader
    if loader is None:
        info.problems.append(f"{where} has no default boot entry (bcdedit /default)")
        return
    device = loader.osdevice
    entry = f"default entry \"{loader.description or loader.guid}\""
    if device is None or device.kind not in ("partition", "boot"):
        info.problems.append(f"{where}: {entry} boots {device.kind if device else 'no device'}, "
                             "not a partition of this disk")
        return
    if device.kind == "partition" and device.scheme == "mbr" and (
            disk.table.scheme != "mbr" or disk.table.disk_signature != device.disk_signature):
        mine = f"0x{disk.table.disk_signature:08X}" if disk.table.disk_signature is not None \
            else "none"
        info.problems.append(f"{where}: {entry} boots a partition of the disk with signature "
                             f"0x{device.disk_signature:08X}, but this disk's signature is "
                             f"{mine}; fix the store on the VM with "
                             "bcdedit /set {default} device partition=C: and "
                             "bcdedit /set {default} osdevice partition=C:")
        return
    info.loader = loader
    target = device_volume(disk, device, system)
    if target is None:
        info.problems.append(f"{where}: {entry} boots the {device.describe()}, where this disk "
                             "has no partition")
        return
    info.boot_volume = target.number
    info.how = f"{where}: {entry} boots volume {target.number}"
    if target not in os_volumes:
        info.problems.append(f"{where}: {entry} boots {target.describe()}, which has no "
                             "Windows\\System32\\winload.exe")


# ---------------------------------------------------------------------------- Linux
GRUB_PLACES = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg", "grub/grub.cfg", "grub2/grub.cfg",
               "EFI/*/grub.cfg")
ROOT_ARG = re.compile(r"(?:^|\s)root=(\S+)")
LINUX_LINE = re.compile(r"^\s*linux(?:efi)?\s+\S+(.*)$", re.MULTILINE)
SEARCH_UUID = re.compile(r"^\s*search(?:\.fs_uuid\s+(\S+)|\s.*--fs-uuid.*?\s([0-9A-Fa-f-]{8,}))",
                         re.MULTILINE)


def _root_candidates(disk: DiskVolumes) -> list[Volume]:
    return [v for v in disk.with_fs() if v.fs_type.startswith("ext")
            and (_has(v, "etc/fstab") or _has(v, "etc/os-release"))]


def _match_spec(disk: DiskVolumes, spec: str) -> Volume | None:
    key, _, value = spec.partition("=")
    value = value.strip('"')
    for v in disk.volumes:
        if key == "UUID" and v.uuid and v.uuid.lower() == value.lower():
            return v
        if key == "PARTUUID" and v.partition and (v.partition.guid or "").lower() == value.lower():
            return v
        if key == "LABEL" and v.label and v.label == value:
            return v
    device = re.fullmatch(r"/dev/(?:sd[a-z]|vd[a-z]|xvd[a-z]|nvme\d+n\d+p)(\d+)", spec)
    if device:
        return next((v for v in disk.volumes if v.number == int(device.group(1))), None)
    return None


def linux_boot(disk: DiskVolumes) -> BootInfo | None:
    """None when no volume holds a Linux root file system."""
    roots = _root_candidates(disk)
    if not roots:
        return None
    info = BootInfo("linux", [v.number for v in roots])
    configs = _grub_configs(disk)
    if not _boot_by_root_argument(disk, configs, info):
        return info
    if info.boot_volume is None:
        _boot_by_search_uuid(disk, configs, info)
    if info.boot_volume is None and not _boot_by_fstab(disk, roots, info):
        return info
    _check_boot_root(disk, roots, info)
    return info


def _grub_configs(disk: DiskVolumes) -> list[tuple[Volume, str, str]]:
    """Every GRUB configuration on the disk: (volume, path, text)."""
    configs = []
    for volume in disk.with_fs():
        for pattern in GRUB_PLACES:
            for found in glob(volume, pattern):
                configs.append((volume, found.path, read_text(found)))
    return configs


def _boot_by_root_argument(disk: DiskVolumes, configs: list[tuple[Volume, str, str]],
                           info: BootInfo) -> bool:
    """The kernel's root= decides (the first linux line with one); False, with the
    problem said, when it names no volume of this disk."""
    for volume, path, text in configs:
        for line in LINUX_LINE.finditer(text):
            match = ROOT_ARG.search(line.group(1))
            if not match:
                continue
            target = _match_spec(disk, match.group(1))
            if target is None:
                info.problems.append(f"{path} on volume {volume.number} boots the kernel with "
                                     f"root={match.group(1)}, which no volume of this disk is")
                return False
            info.boot_volume = target.number
            info.how = f"{path} on volume {volume.number} boots root={match.group(1)}"
            return True
    return True


def _boot_by_search_uuid(disk: DiskVolumes, configs: list[tuple[Volume, str, str]],
                         info: BootInfo) -> None:
    """An ESP stub: search --fs-uuid sets the root."""
    for volume, path, text in configs:
        match = SEARCH_UUID.search(text)
        if match:
            uuid = match.group(1) or match.group(2)
            target = _match_spec(disk, f"UUID={uuid}")
            if target is not None:
                info.boot_volume = target.number
                info.how = f"{path} on volume {volume.number} searches for UUID {uuid}"
                return


def _boot_by_fstab(disk: DiskVolumes, roots: list[Volume], info: BootInfo) -> bool:
    """No boot loader names the root: the one volume whose /etc/fstab mounts itself as /;
    False, with the problem said, when there is not exactly one."""
    own = [v for v in roots if _fstab_root(v) and _match_spec(disk, _fstab_root(v)) is v]
    if len(own) == 1:
        info.boot_volume = own[0].number
        info.how = f"no boot loader configuration found; /etc/fstab of volume " \
                   f"{own[0].number} mounts it as /"
        info.warnings.append("no grub.cfg found on the disk; the boot loader is not checked")
        return True
    info.problems.append("cannot tell the root file system: no grub.cfg names it and "
                         f"{len(own)} volume(s) mount themselves as / in /etc/fstab")
    return False


def _check_boot_root(disk: DiskVolumes, roots: list[Volume], info: BootInfo) -> None:
    """The volume booted as / must be a Linux root, and say so itself."""
    target = disk.get(info.boot_volume)
    if target not in roots:
        info.problems.append(f"{info.how}, but {target.describe()} has no /etc/fstab or "
                             "/etc/os-release: not a Linux root file system")
        return
    fstab_root = _fstab_root(target)
    if fstab_root and _match_spec(disk, fstab_root) not in (target, None):
        info.warnings.append(f"/etc/fstab on volume {target.number} mounts {fstab_root} as /, "
                             f"which is another volume")


def _fstab_root(volume: Volume) -> str | None:
    found = resolve(volume, "etc/fstab")
    if found is None:
        return None
    for line in read_text(found, 1024 * 1024).splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1] == "/":
            return fields[0]
    return None


def find_boot(disk: DiskVolumes) -> list[BootInfo]:
    """Boot facts for each operating system found on the disk (usually one)."""
    return [info for info in (windows_boot(disk), linux_boot(disk)) if info is not None]
