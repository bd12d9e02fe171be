"""What the boot checks found for one operating system: its volumes, the one the disk boots,
and (Windows) the boot manager's files on the system volume; shared by the Windows and Linux
boot readers (boot_windows.py, boot.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vhdfs.guest.bcd import BcdLoader
from vhdfs.guest.efi import EfiImage
from vhdfs.guest.paths import resolve
from vhdfs.guest.volumes import Volume


@dataclass
class BootFile:
    """A file the firmware or the boot manager reads: `\\bootmgr`, `\\EFI\\Microsoft\\Boot\\BCD`."""

    path: str  # as Windows writes it, with backslashes
    volume: int
    present: bool
    role: str  # "boot manager", "boot configuration", "firmware fallback"
    efi: EfiImage | None = None  # for EFI programs: what their headers say

    def to_json(self) -> dict:
        out = {"path": self.path, "volume": self.volume, "present": self.present,
               "role": self.role}
        if self.efi is not None:
            out["efi"] = self.efi.to_json()
        return out


@dataclass
class BootInfo:
    os: str  # "windows" or "linux"
    os_volumes: list[int]  # volumes that hold an operating system
    boot_volume: int | None = None
    system_volume: int | None = None  # Windows: where the boot manager and BCD live
    how: str = ""  # how the boot volume was decided, in words
    loader: BcdLoader | None = None  # Windows: the BCD's default entry
    firmware: str = ""  # Windows: "BIOS" (MBR) or "UEFI" (GPT)
    boot_files: list[BootFile] = field(default_factory=list)  # Windows: on the system volume
    problems: list[str] = field(default_factory=list)  # each one stops the disk from booting
    warnings: list[str] = field(default_factory=list)
    fixes: dict[str, str] = field(default_factory=dict)  # problem -> what fixes it

    def problem(self, message: str, fix: str = "") -> None:
        self.problems.append(message)
        if fix:
            self.fixes[message] = fix

    def to_json(self) -> dict:
        out = {"os": self.os, "os_volumes": self.os_volumes, "boot_volume": self.boot_volume,
               "system_volume": self.system_volume, "how": self.how, "problems": self.problems,
               "warnings": self.warnings}
        if self.firmware:
            out["firmware"] = self.firmware
            out["boot_files"] = [f.to_json() for f in self.boot_files]
        return out


def manager_json(info: BootInfo) -> dict:
    """Windows: the boot manager as inspect --json shows it."""
    loader = info.loader
    entry = None
    if loader is not None:
        entry = {"guid": loader.guid, "description": loader.description, "path": loader.path,
                 "device": loader.device.describe() if loader.device else None,
                 "osdevice": loader.osdevice.describe() if loader.osdevice else None}
    return {"firmware": info.firmware or None, "system_volume": info.system_volume,
            "files": [f.to_json() for f in info.boot_files], "default_entry": entry,
            "boot_volume": info.boot_volume, "problems": info.problems}


def has(volume: Volume, path: str) -> bool:
    return volume.fs is not None and resolve(volume, path) is not None
