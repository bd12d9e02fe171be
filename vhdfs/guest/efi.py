"""Is a file on an EFI system partition a UEFI application the firmware can start?

UEFI firmware loads a PE/COFF image whose optional header names the EFI application
subsystem (10) and whose machine is the CPU's: x64 on Azure's generation 2 VMs (Arm64 on the
Arm64 sizes). A truncated copy, a zero-filled file left by a failed copy, or a BIOS program
put in its place is refused by the firmware with no message the user sees. Only the headers
are read (pefile parses them from the first 4 KiB), so a remote image fetches little.
"""

from __future__ import annotations

from dataclasses import dataclass

import pefile

from vhdfs.guest.image import tsk_call
from vhdfs.guest.paths import Found

SUBSYSTEM_EFI_APPLICATION = 10
EFI_SUBSYSTEMS = {10: "EFI application", 11: "EFI boot service driver",
                  12: "EFI runtime driver", 13: "EFI ROM"}
MACHINES = {0x8664: "x64", 0xAA64: "Arm64", 0x14C: "x86", 0x1C4: "Arm"}
HEADER_BYTES = 4096


@dataclass(frozen=True)
class EfiImage:
    path: str
    machine: str = ""  # "x64", "Arm64", ...; "" when the file is no PE image
    subsystem: int | None = None
    problem: str = ""  # why the firmware would not start it; "" when it would

    def to_json(self) -> dict:
        return {"path": self.path, "machine": self.machine or None,
                "subsystem": self.subsystem, "problem": self.problem or None}


def _head(found: Found) -> bytes:
    size = min(HEADER_BYTES, int(found.file.info.meta.size))
    if size <= 0:
        return b""
    volume = found.volume
    return tsk_call(volume.image, f"{volume.describe()}: {found.path}", found.file.read_random,
                    0, size)


def efi_application(found: Found) -> EfiImage:
    """What the headers of `found` say; `problem` set when it is not an EFI application."""
    head = _head(found)
    shown = found.path.replace("/", "\\")
    if not head.strip(b"\x00"):
        return EfiImage(found.path, problem=f"{shown} is empty or all zeros")
    try:
        pe = pefile.PE(data=head, fast_load=True)
    except pefile.PEFormatError as exc:
        return EfiImage(found.path, problem=f"{shown} is not a PE image ({exc})")
    machine_code = pe.FILE_HEADER.Machine
    machine = MACHINES.get(machine_code, f"machine 0x{machine_code:04x}")
    subsystem = int(pe.OPTIONAL_HEADER.Subsystem)
    if subsystem != SUBSYSTEM_EFI_APPLICATION:
        what = EFI_SUBSYSTEMS.get(subsystem, f"subsystem {subsystem}, not an EFI program")
        return EfiImage(found.path, machine, subsystem,
                        f"{shown} is a PE image for {what}, not an EFI application")
    if machine not in ("x64", "Arm64"):
        return EfiImage(found.path, machine, subsystem,
                        f"{shown} is an EFI application for {machine}; Azure's generation 2 VMs "
                        "start x64 (or Arm64) ones")
    return EfiImage(found.path, machine, subsystem)
