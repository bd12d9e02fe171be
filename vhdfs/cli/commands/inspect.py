"""vhdfs inspect IMAGE [--json]"""

from __future__ import annotations

import argparse

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.guest.boot import BootInfo, find_boot
from vhdfs.guest.inspect import OsFound, inspect_disk
from vhdfs.guest.inspect.linux import LinuxInfo
from vhdfs.guest.volumes import open_volumes
from vhdfs.quoting import escape
from vhdfs.units import human


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect", help="which operating systems the disk holds (product, version, boot mode, "
        "agent, kernels)",
        description="Identify the operating systems on the disk, as virt-inspector does, read "
        "offline through the chain (only the files asked for are read): Windows from its "
        "SYSTEM and SOFTWARE hives (product, edition, version and build, architecture, "
        "hostname, Sysprep's image state), Linux from /etc/os-release, /boot, /lib/modules and "
        "the boot loader configuration; for each, the root (and system) volume, the boot mode "
        "(BIOS on MBR or UEFI on GPT, hence Hyper-V generation 1 or 2) and the Azure agent "
        "installed. Exit status 1 when no operating system is found.")
    parser.add_argument("image")
    add_image_options(parser)
    parser.set_defaults(func=run)


def shown(text: object) -> str:
    """Text from inside the image, made safe for a terminal (control characters escaped)."""
    return escape(str(text), backslash=False)


def _lines(system: OsFound) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("product", system.product)]
    if system.windows:
        w = system.windows
        if w.edition or w.installation_type:
            rows.append(("edition", ", ".join(p for p in (w.edition, w.installation_type) if p)))
        version = " ".join(p for p in (w.version, f"build {w.build}" if w.build else "",
                                       f"({w.display_version})" if w.display_version else "")
                           if p)
        rows.append(("version", version or "unknown"))
    if system.linux:
        lx = system.linux
        release = lx.os_release
        rows.append(("distribution", " ".join(p for p in (lx.distribution,
                                                           release.get("VERSION_ID", "")) if p)
                     or "unknown"))
    rows += [("architecture", system.architecture or "unknown"),
             ("hostname", system.hostname or "not set")]
    rows.append(("root", _root_text(system)))
    mode = system.boot_mode
    rows.append(("boot", f"{mode.mode}: Hyper-V generation {mode.generation} ({mode.how})"))
    if mode.azure_generation:
        rows.append(("azure", f"create the image or disk with --hyper-v-generation "
                              f"{mode.azure_generation}"))
    if system.windows and system.boot:
        rows += _windows_boot_rows(system.boot)
    if system.windows:
        w = system.windows
        state = w.image_state or w.image_state_ini
        rows.append(("image state", state or "unknown"))
        rows += [("problem", p) for p in w.problems]
    if system.linux:
        rows += _linux_boot_rows(system.linux)
    if system.agents:
        rows += [("agent", f"{a.profile.name} {a.version or '(version unknown)'}")
                 for a in system.agents]
    else:
        rows.append(("agent", "no Azure agent found"))
    return rows


def _windows_boot_rows(boot: BootInfo) -> list[tuple[str, str]]:
    """The boot manager's files on the system volume, the BCD's default entry, problems."""
    rows: list[tuple[str, str]] = []
    if boot.boot_files:
        present = [f.path for f in boot.boot_files if f.present]
        missing = [f.path for f in boot.boot_files if not f.present]
        text = f"volume {boot.system_volume}: " + (", ".join(present) or "none of its files")
        rows.append(("boot manager", text + (f"; missing {', '.join(missing)}" if missing
                                             else "")))
    if boot.loader is not None:
        rows.append(("boot entry", f'"{boot.loader.description}" starts {boot.loader.path} '
                                   f"on volume {boot.boot_volume}"))
    rows += [("boot problem", p) for p in boot.problems]
    return rows


def _root_text(system: OsFound) -> str:
    root = f"volume {system.root.number} ({system.root.fs_type}" + \
        (f' "{system.root.label}"' if system.root.label else "") + ")"
    if system.system_volume is not None and system.system_volume != system.root.number:
        root += f"; system volume {system.system_volume}"
    return root


def _linux_boot_rows(lx: LinuxInfo) -> list[tuple[str, str]]:
    """Kernels (the default one marked), the boot loader's default entry, notes."""
    rows: list[tuple[str, str]] = []
    default = lx.boot.default if lx.boot else None
    for kernel in lx.kernels:
        marks = []
        if default and default.kernel and default.kernel.rsplit("/", 1)[-1] \
                == kernel.path.rsplit("/", 1)[-1]:
            marks.append("default")
        if not kernel.modules:
            marks.append("no /lib/modules tree")
        rows.append(("kernel", kernel.version + (f" ({', '.join(marks)})" if marks else "")))
    if not lx.kernels:
        rows.append(("kernel", "none in /boot"))
    if lx.boot:
        entry = f'default "{default.title}"' if default else "no default entry"
        rows.append(("boot loader", f"{lx.boot.loader}, {lx.boot.describe()}: {entry}"))
    else:
        rows.append(("boot loader", "no configuration found"))
    rows += [("note", n) for n in lx.notes]
    return rows


def run(args: argparse.Namespace) -> int:
    with open_image(args, args.image, allow_raw=True) as chain:
        disk = open_volumes(chain)
        inspection = inspect_disk(disk, find_boot(disk))
        if args.json:
            print_json({"image": args.image, "size": chain.size, **inspection.to_json()})
            return 0 if inspection.systems else 1
        table = disk.table.scheme.upper() if disk.table.scheme != "none" else "no partition table"
        print(f"inspect {shown(args.image)}: {human(chain.size)}, {table}")
        if not inspection.systems:
            print("no operating system found (no volume holds Windows\\System32\\winload.exe or "
                  "a Linux root file system)")
            return 1
        for number, system in enumerate(inspection.systems, start=1):
            print(f"{system.os.capitalize()} (OS {number} of {len(inspection.systems)})")
            rows = _lines(system)
            width = max(len(name) for name, _ in rows)
            for name, value in rows:
                print(f"  {name + ':':<{width + 1}}  {shown(value)}")
    return 0
