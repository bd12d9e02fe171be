"""`vhdfs inspect`: which operating systems a disk holds, read offline through the chain.

What virt-inspector answers, for the questions an Azure upload asks: for each OS, Windows or
Linux, its product, edition, version and build, architecture, hostname, root (and system)
volume, boot mode (BIOS on MBR, UEFI on GPT, hence Hyper-V generation 1 or 2), the Azure agent
installed, and for Linux the distribution, the kernels present and the default boot entry.
Everything is read lazily: only the files asked for are fetched, through every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vhdfs.guest.agents import AgentFound, find_agents, load_profiles
from vhdfs.guest.boot import BootInfo, linux_boot, windows_boot
from vhdfs.guest.bootinfo import manager_json
from vhdfs.guest.inspect.bootloader import read_boot_config
from vhdfs.guest.inspect.linux import LinuxInfo, inspect_linux_root
from vhdfs.guest.inspect.windows import WindowsInfo, inspect_windows_volume
from vhdfs.guest.paths import glob
from vhdfs.guest.volumes import DiskVolumes, Volume

EFI_LOADERS = ("EFI/*/*.efi",)


@dataclass
class BootMode:
    mode: str  # "BIOS", "UEFI", "BIOS and UEFI", "unknown"
    generation: str  # "1", "2", "1 or 2", "unknown"
    how: str

    @property
    def azure_generation(self) -> str | None:
        """What az's --hyper-v-generation takes for it: "V1", "V2", "V1 or V2"."""
        if self.generation not in ("1", "2", "1 or 2"):
            return None
        return " or ".join(f"V{g}" for g in self.generation.split(" or "))

    def to_json(self) -> dict:
        return {"mode": self.mode, "hyperv_generation": self.generation,
                "azure_hyper_v_generation": self.azure_generation, "how": self.how}


@dataclass
class OsFound:
    os: str  # "windows" or "linux"
    root: Volume
    boot: BootInfo | None
    boot_mode: BootMode
    agents: list[AgentFound] = field(default_factory=list)
    windows: WindowsInfo | None = None
    linux: LinuxInfo | None = None

    @property
    def product(self) -> str:
        if self.windows:
            return self.windows.product
        return self.linux.product if self.linux else ""

    @property
    def hostname(self) -> str:
        if self.windows:
            return self.windows.hostname
        return self.linux.hostname if self.linux else ""

    @property
    def architecture(self) -> str:
        if self.windows:
            return self.windows.architecture
        return self.linux.architecture if self.linux else ""

    @property
    def system_volume(self) -> int | None:
        return self.boot.system_volume if self.boot else None

    def to_json(self) -> dict:
        out: dict = {"os": self.os, "product": self.product, "architecture": self.architecture,
                     "hostname": self.hostname, "root_volume": self.root.number,
                     "system_volume": self.system_volume, "boot": self.boot_mode.to_json(),
                     "agents": [a.to_json() for a in self.agents]}
        if self.windows:
            w = self.windows
            out.update({"edition": w.edition, "installation_type": w.installation_type,
                        "version": w.version, "build": w.build,
                        "display_version": w.display_version,
                        "control_set": w.control_set or None,
                        "image_state": w.image_state, "image_state_ini": w.image_state_ini,
                        "problems": w.problems,
                        "boot_manager": manager_json(self.boot) if self.boot else None})
        if self.linux:
            lx = self.linux
            release = lx.os_release
            out.update({"distribution": lx.distribution, "version": release.get("VERSION_ID", ""),
                        "os_release": release, "kernels": [k.to_json() for k in lx.kernels],
                        "module_trees": lx.module_trees,
                        "boot_loader": lx.boot.to_json() if lx.boot else None,
                        "fstab": [e.to_json() for e in lx.fstab], "notes": lx.notes})
        return out


@dataclass
class Inspection:
    scheme: str
    systems: list[OsFound] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"partition_table": self.scheme,
                "operating_systems": [s.to_json() for s in self.systems]}


def boot_mode(disk: DiskVolumes, os_name: str) -> BootMode:
    scheme = disk.table.scheme
    if scheme == "mbr":
        return BootMode("BIOS", "1", "an MBR disk boots through the BIOS")
    if scheme != "gpt":
        return BootMode("unknown", "unknown", "the disk has no partition table")
    esps = [v for v in disk.volumes if v.partition and v.partition.is_efi_system]
    bios_boot = [v for v in disk.volumes if v.type_name == "BIOS boot"]
    uefi = any(v.fs is not None and glob(v, pattern) for v in esps for pattern in EFI_LOADERS)
    if os_name == "windows":  # Windows boots a GPT disk through UEFI only
        how = f"a GPT disk with an EFI system partition (volume {esps[0].number})" if esps \
            else "a GPT disk (but no EFI system partition)"
        return BootMode("UEFI", "2", how)
    if uefi and bios_boot:
        return BootMode("BIOS and UEFI", "1 or 2", "a GPT disk with both an EFI system partition "
                        "holding a boot loader and a BIOS boot partition")
    if uefi:
        return BootMode("UEFI", "2", f"a GPT disk whose EFI system partition (volume "
                        f"{esps[0].number}) holds a boot loader")
    if bios_boot:
        return BootMode("BIOS", "1", f"a GPT disk with a BIOS boot partition (volume "
                        f"{bios_boot[0].number}) for GRUB")
    return BootMode("unknown", "unknown", "a GPT disk with neither an EFI boot loader nor a BIOS "
                    "boot partition")


def inspect_disk(disk: DiskVolumes, boots: list[BootInfo] | None = None) -> Inspection:
    """Every operating system on the disk; `boots` reuses what find_boot already found."""
    inspection = Inspection(disk.table.scheme)
    if boots is None:
        boots = [b for b in (windows_boot(disk), linux_boot(disk)) if b is not None]
    agents = find_agents(disk, list(load_profiles().values()))
    for boot in boots:
        numbers = [boot.boot_volume] if boot.boot_volume is not None else boot.os_volumes
        for number in numbers:
            volume = disk.get(number)
            if volume.fs is None:
                continue
            found = OsFound(boot.os, volume, boot, boot_mode(disk, boot.os),
                            [a for a in agents if a.volume is volume
                             and a.profile.os == boot.os])
            if boot.os == "windows":
                found.windows = inspect_windows_volume(volume)
            else:
                found.linux = inspect_linux_root(volume)
                found.linux.boot = read_boot_config(disk, prefer=volume)
            inspection.systems.append(found)
    return inspection
