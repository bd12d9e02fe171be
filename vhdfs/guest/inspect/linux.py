"""Inspect a Linux root file system: distribution, hostname, architecture, kernels, fstab.

- Distribution: `/etc/os-release` (or `/usr/lib/os-release`), the file systemd and every
  current distribution ship; shell-style `KEY="value"` lines.
- Architecture: the ELF header of the first of a few programs every system has (`/bin/sh`, ...).
- Kernels: `/boot/vmlinuz-*` (and `vmlinux-*`, `Image-*`), each with the version its x86
  bzImage header names when it has one, and `/lib/modules/*` (the module trees installed).
- Mounts: `/etc/fstab`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from construct import Bytes, Const, Int16ub, Int16ul, Padding, Struct

from vhdfs.guest.files import read_text
from vhdfs.guest.inspect.bootloader import BootConfig
from vhdfs.guest.inspect.reading import read_at, read_head
from vhdfs.guest.paths import child_names, glob, resolve
from vhdfs.guest.volumes import Volume

TEXT_LIMIT = 1024 * 1024
ELF_PROGRAMS = ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/env", "sbin/init", "usr/lib/systemd/systemd")
ELF_MACHINES = {0x03: "i386", 0x08: "mips", 0x14: "ppc", 0x15: "ppc64", 0x16: "s390x",
                0x28: "arm", 0x3E: "x86_64", 0xB7: "aarch64", 0xF3: "riscv64"}
KERNEL_GLOBS = ("boot/vmlinuz-*", "boot/vmlinux-*", "boot/Image-*", "boot/kernel-*")
KERNEL_PREFIXES = ("vmlinuz-", "vmlinux-", "Image-", "kernel-")

# The start of an ELF file: identification, then e_type and e_machine in the file's byte order.
ELF_IDENT = Struct(
    "magic" / Const(b"\x7fELF"),
    "elf_class" / Bytes(1),
    "data" / Bytes(1),
    Padding(10),
)
ELF_MACHINE_LE = Struct(Padding(18), "machine" / Int16ul)
ELF_MACHINE_BE = Struct(Padding(18), "machine" / Int16ub)

# The x86 boot protocol header of a bzImage: "HdrS" at 0x202; kernel_version (0x20E) points,
# 0x200 bytes short, at the version string ("6.1.0-18-amd64 (debian-kernel@...) #1 SMP ...").
BZIMAGE_HEADER = Struct(
    Padding(0x202),
    "magic" / Const(b"HdrS"),
    "protocol" / Int16ul,
    Padding(6),
    "kernel_version" / Int16ul,
)


@dataclass
class FstabEntry:
    spec: str
    mountpoint: str
    fs_type: str
    options: str
    line: int

    def to_json(self) -> dict:
        return {"spec": self.spec, "mountpoint": self.mountpoint, "type": self.fs_type,
                "options": self.options, "line": self.line}


@dataclass
class Kernel:
    version: str
    path: str
    version_from: str  # "bzImage header" or "file name"
    modules: bool  # /lib/modules/<version> exists

    def to_json(self) -> dict:
        return {"version": self.version, "path": self.path, "version_from": self.version_from,
                "modules": self.modules}


@dataclass
class LinuxInfo:
    root: Volume
    os_release: dict[str, str] = field(default_factory=dict)
    os_release_path: str = ""
    hostname: str = ""
    architecture: str = ""
    kernels: list[Kernel] = field(default_factory=list)
    module_trees: list[str] = field(default_factory=list)
    fstab: list[FstabEntry] = field(default_factory=list)
    boot: BootConfig | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def distribution(self) -> str:
        return self.os_release.get("ID", "")

    @property
    def product(self) -> str:
        release = self.os_release
        return release.get("PRETTY_NAME") or " ".join(
            p for p in (release.get("NAME", ""), release.get("VERSION", "")) if p) or "Linux"


def _text(volume: Volume, path: str, limit: int = TEXT_LIMIT) -> tuple[str, str] | None:
    found = resolve(volume, path)
    if found is None or found.is_dir:
        return None
    return read_text(found, limit), found.path


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value.strip("\"'")]
        out[key.strip()] = " ".join(words)
    return out


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            entries.append(FstabEntry(fields[0], fields[1], fields[2] if len(fields) > 2 else "",
                                      fields[3] if len(fields) > 3 else "", number))
    return entries


def elf_architecture(head: bytes) -> str | None:
    try:
        ident = ELF_IDENT.parse(head)
    except Exception:
        return None
    layout = ELF_MACHINE_BE if ident.data == b"\x02" else ELF_MACHINE_LE
    if len(head) < layout.sizeof():
        return None
    machine = layout.parse(head).machine
    name = ELF_MACHINES.get(machine, f"ELF machine 0x{machine:x}")
    if name == "i386" and ident.elf_class == b"\x02":
        return "x86_64"
    return name


def bzimage_version(head: bytes, read_at) -> str | None:
    """The version string of an x86 bzImage, or None for anything else."""
    try:
        header = BZIMAGE_HEADER.parse(head)
    except Exception:
        return None
    if header.protocol < 0x200 or not header.kernel_version:
        return None
    text = read_at(header.kernel_version + 0x200, 256).split(b"\0", 1)[0]
    version = text.decode("ascii", errors="replace").split(" ", 1)[0]
    return version or None


def _architecture(volume: Volume) -> str:
    for program in ELF_PROGRAMS:
        found = resolve(volume, program)
        if found is None or found.is_dir:
            continue
        arch = elf_architecture(read_head(found, 64))
        if arch:
            return arch
    return ""


def _kernels(volume: Volume, module_trees: list[str]) -> list[Kernel]:
    kernels = []
    seen = set()
    for pattern in KERNEL_GLOBS:
        for found in glob(volume, pattern):
            if found.is_dir or found.path in seen:
                continue
            seen.add(found.path)
            name = found.parts[-1]
            from_name = next((name[len(p):] for p in KERNEL_PREFIXES if name.startswith(p)), name)
            if from_name.endswith((".old", ".bak", ".sig", ".hmac")) or "rescue" in from_name:
                continue

            version = bzimage_version(read_head(found, 0x220),
                                      lambda offset, size, f=found: read_at(f, offset, size))
            kernels.append(Kernel(version or from_name, found.path,
                                  "bzImage header" if version else "file name",
                                  (version or from_name) in module_trees))
    kernels.sort(key=lambda k: [int(p) if p.isdigit() else 0
                                for p in re.split(r"[.\-+_]", k.version)], reverse=True)
    return kernels


def kernel_version_of(path: str, kernels: list[Kernel]) -> str | None:
    """The version of the kernel file at `path` (as a boot entry names it)."""
    name = path.rsplit("/", 1)[-1]
    for kernel in kernels:
        if kernel.path.rsplit("/", 1)[-1] == name:
            return kernel.version
    return next((name[len(p):] for p in KERNEL_PREFIXES if name.startswith(p)), None)


def inspect_linux_root(volume: Volume) -> LinuxInfo:
    info = LinuxInfo(volume)
    for path in ("etc/os-release", "usr/lib/os-release"):
        got = _text(volume, path)
        if got:
            info.os_release, info.os_release_path = parse_os_release(got[0]), got[1]
            break
    else:
        info.notes.append("no /etc/os-release: the distribution is unknown")
    hostname = _text(volume, "etc/hostname", 4096)
    if hostname:
        info.hostname = next((w for w in hostname[0].split() if not w.startswith("#")), "")
    info.architecture = _architecture(volume)
    modules = resolve(volume, "lib/modules")
    if modules is not None and modules.is_dir:
        info.module_trees = sorted(child_names(modules))
    info.kernels = _kernels(volume, info.module_trees)
    fstab = _text(volume, "etc/fstab")
    if fstab:
        info.fstab = parse_fstab(fstab[0])
    if not info.architecture:
        arch = next((a for k in info.kernels for s, a in (("amd64", "x86_64"),
                     ("x86_64", "x86_64"), ("arm64", "aarch64"), ("aarch64", "aarch64"))
                     if s in k.version), "")
        info.architecture = arch
    return info

