"""Inspect a Windows volume from its offline SYSTEM and SOFTWARE hives.

SOFTWARE  Microsoft\\Windows NT\\CurrentVersion      ProductName, EditionID, InstallationType,
                                                    CurrentMajor/MinorVersionNumber (or
                                                    CurrentVersion), CurrentBuild, UBR,
                                                    DisplayVersion
          Microsoft\\Windows\\CurrentVersion\\Setup\\State   ImageState (what Sysprep left)
SYSTEM    Select\\Current -> ControlSet00N (what CurrentControlSet stands for), then
          Control\\ComputerName\\ComputerName    ComputerName
          Services\\Tcpip\\Parameters            Hostname
          Control\\Session Manager\\Environment  PROCESSOR_ARCHITECTURE
Also `Windows\\Setup\\State\\State.ini` (`[State] ImageState=`), which Sysprep writes beside the
registry value. Without a readable SYSTEM hive the architecture comes from the PE header of
the kernel (`Windows\\System32\\ntoskrnl.exe`) or the boot loader.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

import pefile

from vhdfs.guest.files import read_all
from vhdfs.guest.hives import Hive, HiveError, current_control_set, open_hive
from vhdfs.guest.inspect.reading import read_head
from vhdfs.guest.paths import resolve
from vhdfs.guest.volumes import Volume

CURRENT_VERSION = "Microsoft\\Windows NT\\CurrentVersion"
SETUP_STATE = "Microsoft\\Windows\\CurrentVersion\\Setup\\State"
ARCHITECTURES = {"AMD64": "x86_64", "X86": "i386", "ARM64": "aarch64", "ARM": "arm",
                 "IA64": "ia64"}
PE_MACHINES = {0x8664: "x86_64", 0x14C: "i386", 0xAA64: "aarch64", 0x1C4: "arm"}
PE_PROGRAMS = ("Windows/System32/ntoskrnl.exe", "Windows/System32/winload.exe",
               "Windows/System32/winload.efi")


@dataclass
class WindowsInfo:
    volume: Volume
    system: Hive | None = None
    software: Hive | None = None
    control_set: str = ""  # "ControlSet001"
    product: str = ""
    edition: str = ""
    installation_type: str = ""  # "Server", "Client", "Server Core"
    version: str = ""  # "10.0"
    build: str = ""  # "20348.2227"
    display_version: str = ""  # "21H2"
    hostname: str = ""
    architecture: str = ""
    image_state: str | None = None  # from the SOFTWARE hive
    image_state_ini: str | None = None  # from Windows\Setup\State\State.ini
    problems: list[str] = field(default_factory=list)  # hives that could not be read, and why

    def ccs(self, path: str) -> str:
        """A path under CurrentControlSet, in the control set Select\\Current names."""
        return f"{self.control_set}\\{path}"


def _read_state_ini(volume: Volume) -> str | None:
    found = resolve(volume, "Windows/Setup/State/State.ini")
    if found is None or found.is_dir:
        return None
    data = read_all(found, 64 * 1024)
    if data.startswith(codecs.BOM_UTF16_LE):
        text = data[2:].decode("utf-16-le", errors="replace")
    elif data.startswith(codecs.BOM_UTF8):
        text = data[3:].decode("utf-8", errors="replace")
    else:
        text = data.decode("latin-1")
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "imagestate":
            return value.strip()
    return ""


def _pe_architecture(volume: Volume) -> str:
    for path in PE_PROGRAMS:
        found = resolve(volume, path)
        if found is None or found.is_dir:
            continue
        try:
            pe = pefile.PE(data=read_head(found, 4096), fast_load=True)
        except pefile.PEFormatError:  # a damaged file tells nothing; try the next
            continue
        machine = pe.FILE_HEADER.Machine
        return PE_MACHINES.get(machine, f"PE machine 0x{machine:x}")
    return ""


def _from_software(info: WindowsInfo, software: Hive) -> None:
    values = software.values(CURRENT_VERSION)
    info.product = str(values.get("ProductName", "") or "")
    info.edition = str(values.get("EditionID", "") or "")
    info.installation_type = str(values.get("InstallationType", "") or "")
    major, minor = values.get("CurrentMajorVersionNumber"), values.get("CurrentMinorVersionNumber")
    if isinstance(major, int) and isinstance(minor, int):
        info.version = f"{major}.{minor}"
    else:
        info.version = str(values.get("CurrentVersion", "") or "")
    build = str(values.get("CurrentBuild") or values.get("CurrentBuildNumber") or "")
    ubr = values.get("UBR")
    info.build = f"{build}.{ubr}" if build and isinstance(ubr, int) else build
    info.display_version = str(values.get("DisplayVersion") or values.get("ReleaseId") or "")
    # Windows 11 keeps "Windows 10" in ProductName; build 22000 and later is Windows 11
    if info.installation_type == "Client" and info.product.startswith("Windows 10") \
            and build.isdigit() and int(build) >= 22000:
        info.product = "Windows 11" + info.product[len("Windows 10"):]
    state = software.value(SETUP_STATE, "ImageState")
    info.image_state = str(state) if state is not None else None


def _from_system(info: WindowsInfo, system: Hive) -> None:
    info.control_set = current_control_set(system)
    name = system.value(info.ccs("Control\\ComputerName\\ComputerName"), "ComputerName")
    host = system.value(info.ccs("Services\\Tcpip\\Parameters"), "Hostname")
    info.hostname = str(host or name or "")
    arch = system.value(info.ccs("Control\\Session Manager\\Environment"),
                        "PROCESSOR_ARCHITECTURE")
    if arch:
        info.architecture = ARCHITECTURES.get(str(arch).upper(), str(arch))


def inspect_windows_volume(volume: Volume) -> WindowsInfo:
    """What the hives of a Windows volume say; unreadable hives become `problems`."""
    info = WindowsInfo(volume)
    for name in ("SOFTWARE", "SYSTEM"):
        try:
            hive = open_hive(volume, name)
        except HiveError as exc:
            info.problems.append(str(exc))
            continue
        if hive is None:
            info.problems.append(f"{volume.describe()}: Windows\\System32\\config\\{name} does not "
                                 "exist")
            continue
        try:
            if name == "SOFTWARE":
                info.software = hive
                _from_software(info, hive)
            else:
                info.system = hive
                _from_system(info, hive)
        except HiveError as exc:
            info.problems.append(str(exc))
    info.image_state_ini = _read_state_ini(volume)
    if not info.architecture:
        info.architecture = _pe_architecture(volume)
    if not info.product:
        info.product = "Windows"
    return info
