"""Which volume a disk boots: the Windows volume the boot manager starts, or the Linux root.

Windows (boot_windows.py): the system volume (the active MBR partition, or the EFI system
partition on GPT) holds the boot manager and its store; the store's default entry names the
boot volume.

Linux: the root file system the boot loader passes to the kernel (grub.cfg `root=UUID=...`,
`PARTUUID=`, `LABEL=` or `/dev/sdXN`), else the one grub's `search --fs-uuid` sets as root, else
the single volume whose own /etc/fstab mounts it as `/`.
"""

from __future__ import annotations

import re

from vhdfs.guest.boot_windows import device_volume, windows_boot
from vhdfs.guest.bootinfo import BootInfo
from vhdfs.guest.bootinfo import has as _has
from vhdfs.guest.files import read_text
from vhdfs.guest.paths import glob, resolve
from vhdfs.guest.volumes import DiskVolumes, Volume

__all__ = ["BootInfo", "device_volume", "find_boot", "linux_boot", "windows_boot"]


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
