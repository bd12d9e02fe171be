"""`vhdfs verify`: is this image ready to upload and boot in Azure?

What the old SDK's VHD verification did before an upload, and what Azure needs today:
  chain      every parent found, identities match, structures sane
  agent      which volume carries an Azure agent (profiles: vhdfs/data/agents.toml) and its version
  boot       whether that volume is the one the disk boots (Windows BCD, Linux grub/fstab)
  size       the disk as `vhdfs upload` sends it (the flattened chain as a fixed VHD) against
             Azure's rules (vhdfs/data/azure_disks.toml)
  vm-sizes   which VM sizes it fits (vhdfs/data/vm_sizes.toml), for information
  guest OS   what Azure's preparation guides ask of a Windows (verify_windows.py) or Linux
             (verify_linux.py) image; a verify profile (vhdfs/data/profiles/) says which checks
             run and what a problem is worth, chosen by the OS found unless --profile says
Each finding is pass, fail, warn or info, with the fix for a problem; any fail fails the
verification. The report carries the inspection (vhdfs inspect) too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vhdfs.azure.rules import check_size, disk_rules, fitting_vm_sizes
from vhdfs.chain import Chain
from vhdfs.errors import UsageError, VhdfsError
from vhdfs.guest.agents import AgentFound, AgentProfile, find_agents, load_profiles
from vhdfs.guest.boot import BootInfo, find_boot
from vhdfs.guest.inspect import Inspection, OsFound, inspect_disk
from vhdfs.guest.verify_gate import Gate
from vhdfs.guest.verify_linux import check_linux
from vhdfs.guest.verify_profiles import (
    DEFAULT_PROFILES,
    VerifyProfile,
    packaged_profiles,
    read_profile_files,
)
from vhdfs.guest.verify_windows import check_windows
from vhdfs.guest.volumes import DiskVolumes, open_volumes
from vhdfs.image import ImageLayer
from vhdfs.units import human

PASS, FAIL, WARN, INFO = "pass", "fail", "warn", "info"
# partition types that hold no file system, so that is no finding
NO_FILE_SYSTEM_EXPECTED = frozenset({"Microsoft reserved", "BIOS boot", "Linux swap", "Linux LVM",
                                     "Linux RAID", "Windows LDM metadata", "Windows LDM data"})


@dataclass
class Finding:
    check: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    fix: str = ""  # what to do about a problem

    def to_json(self) -> dict:
        return {"check": self.check, "status": self.status, "message": self.message,
                **({"fix": self.fix} if self.fix else {}),
                **({"details": self.details} if self.details else {})}


@dataclass
class Report:
    image: str
    findings: list[Finding] = field(default_factory=list)
    profile: VerifyProfile | None = None
    profile_how: str = ""
    inspection: Inspection | None = None

    @property
    def passed(self) -> bool:
        return not any(f.status == FAIL for f in self.findings)

    def add(self, check: str, status: str, message: str, *, fix: str = "",
            **details: Any) -> None:
        self.findings.append(Finding(check, status, message, details, fix))

    def to_json(self) -> dict:
        return {"image": self.image, "passed": self.passed,
                "profile": {**self.profile.to_json(), "chosen": self.profile_how}
                if self.profile else None,
                "findings": [f.to_json() for f in self.findings],
                "inspection": self.inspection.to_json() if self.inspection else None}


def _layer_kind(layer: ImageLayer) -> str:
    """"raw", "fixed", "dynamic", "differencing"; other formats than VHD named first."""
    if layer.disk_type is None:
        return layer.image_format
    prefix = "" if layer.image_format == "VHD" else f"{layer.image_format} "
    return prefix + layer.disk_type.name.lower()


def _check_chain(report: Report, chain: Chain) -> None:
    names = [os.path.basename(layer.name) for layer in chain.layers]
    how = [f"{os.path.basename(link.path)} found by {link.found_by}" for link in chain.links]
    if how:
        message = (f"intact, every parent found and identities match: {' -> '.join(names)} "
                   f"({'; '.join(how)})")
    else:
        message = f"one layer, no parents: {names[0]}"
    report.add("chain", PASS, message, layers=[layer.name for layer in chain.layers],
               links=[{"path": link.path, "found_by": link.found_by, "hint": link.hint}
                      for link in chain.links])
    for layer in chain.layers:
        bad = layer.bad_blocks
        if bad:
            first = sorted(bad)[0]
            report.add("structure", FAIL, f"{os.path.basename(layer.name)}: {len(bad)} damaged "
                       f"block(s), for example block {first}: {bad[first]}; run vhdfs check",
                       layer=layer.name, blocks=sorted(bad))
        for warning in layer.warnings:
            report.add("structure", WARN, warning, layer=layer.name)
    if not any(f.check == "structure" and f.status == FAIL for f in report.findings):
        report.add("structure", PASS, "layer structures sane (footers, headers, BATs, "
                   "identities)")


def _check_upload(report: Report, chain: Chain, image: str, scheme: str) -> None:
    kinds = [_layer_kind(layer) for layer in chain.layers]
    if kinds == ["fixed"]:
        how = "it is already a fixed VHD"
    else:
        how = f"the source is {' over '.join(kinds)}: upload flattens and converts it"
    report.add("upload", INFO, f"vhdfs upload sends a fixed VHD of {chain.size} + 512 bytes; "
               f"{how}", layer_kinds=kinds, virtual_size=chain.size)
    # One local fixed or dynamic VHD: vhdfs resize changes it in place; else a resized copy.
    in_place = kinds in (["fixed"], ["dynamic"]) and not chain.top.source.remote
    for item in check_size(chain.size, image, scheme, in_place=in_place):
        report.add("size", item.status, item.message, virtual_size=chain.size)


def _check_vm_sizes(report: Report, size: int) -> None:
    rules = disk_rules()
    fits, listed = fitting_vm_sizes(size, rules)
    report.add("vm-sizes", INFO, f"as a persistent OS disk it fits every VM size (Azure's OS "
               f"disk limit is {human(rules.os_max)})", os_disk_max=rules.os_max)
    if fits:
        names = ", ".join(s.name if len(p) > 1 else f"{s.name} ({p[0]} only)" for s, p in fits)
        message = (f"as an ephemeral OS disk ({-(-size // (1 << 30))} GiB) it fits {len(fits)} of "
                   f"the {listed} VM sizes in vhdfs's table (cache or temp disk at least that "
                   f"large): {names}")
    else:
        message = (f"as an ephemeral OS disk it fits none of the {listed} VM sizes in vhdfs's "
                   "table (it must fit the size's cache or temp disk)")
    report.add("vm-sizes", INFO, message,
               ephemeral=[{"name": s.name, "placements": p} for s, p in fits])


def _check_agents(report: Report, disk: DiskVolumes, found: list[AgentFound],
                  boots: list[BootInfo], asked: list[str]) -> None:
    boot_by_os = {b.os: b for b in boots}
    good = [a for a in found if a.profile.os in boot_by_os
            and boot_by_os[a.profile.os].boot_volume == a.volume.number]
    for agent in found:
        details = agent.to_json()
        if agent.version:
            source = "its PE version resource" if agent.version_from.endswith(agent.path) \
                and agent.version_from.startswith("PE") else agent.version_from
            report.add("agent", PASS, f"found {agent.describe()} ({agent.path}; version from "
                       f"{source})", **details)
        else:
            report.add("agent", WARN, f"found {agent.describe()} ({agent.path}), but not its "
                       f"version: {agent.version_error}", **details)
        if agent.profile.note:
            report.add("agent", INFO, f"{agent.profile.name}: {agent.profile.note}")
    if not found:
        profiles = ", ".join(asked)
        searched = ", ".join(v.describe() for v in disk.with_fs()) or "no readable volume"
        report.add("agent", FAIL, f"no Azure agent found (profiles: {profiles}; searched "
                   f"{searched}); install the agent in the guest before uploading")
        return
    for agent in found:
        boot = boot_by_os.get(agent.profile.os)
        if agent in good:
            report.add("boot", PASS, f"volume {agent.volume.number} with the "
                       f"{agent.profile.name} is the boot volume ({boot.how})",
                       **boot.to_json())
        elif good:
            report.add("boot", WARN, f"{agent.describe()} is not on the boot volume; the agent on "
                       f"volume {good[0].volume.number} is the one that runs")
        elif boot is None:
            report.add("boot", FAIL, f"found {agent.describe()}, but no volume of this disk holds "
                       f"a bootable {agent.profile.os.capitalize()}: make sure volume "
                       f"{agent.volume.number} is the boot volume")
        elif boot.boot_volume is None:
            report.add("boot", FAIL, f"found {agent.describe()}, but which volume boots cannot "
                       f"be told (see above): make sure volume {agent.volume.number} is the boot "
                       "volume", **boot.to_json())
        else:
            report.add("boot", FAIL, f"found {agent.describe()}, but volume {boot.boot_volume} is "
                       f"the boot volume ({boot.how}): make sure volume {agent.volume.number} is "
                       "the boot volume", **boot.to_json())


def _check_boot(report: Report, boots: list[BootInfo]) -> None:
    if not boots:
        report.add("boot", FAIL, "no volume holds Windows (Windows\\System32\\winload.exe) or a "
                   "Linux root file system (/etc/fstab): nothing on this disk boots")
    for boot in boots:
        for problem in boot.problems:
            report.add("boot", FAIL, f"{boot.os.capitalize()}: {problem}",
                       fix=boot.fixes.get(problem, ""), **boot.to_json())
        for warning in boot.warnings:
            report.add("boot", WARN, f"{boot.os.capitalize()}: {warning}")
        files = boot.boot_files
        if files and all(f.present and not (f.efi and f.efi.problem) for f in files):
            where = "the EFI system partition" if boot.firmware == "UEFI" else \
                "the system partition (active)"
            held = ", ".join(f.path + (f" ({f.efi.machine} EFI application)" if f.efi else "")
                             for f in files)
            report.add("boot", PASS, f"{where}, volume {boot.system_volume}, holds {held}",
                       firmware=boot.firmware, boot_files=[f.to_json() for f in files])


GENERATION_WHY = {
    "2": "it boots through UEFI from a GPT disk, and a generation 1 VM's BIOS does not boot a "
         "GPT disk",
    "1": "it boots through the BIOS, and a generation 2 VM's UEFI firmware does not boot it",
    "1 or 2": "it boots through the BIOS and through UEFI",
}


def _check_generation(report: Report, system: OsFound) -> None:
    """Azure creates a VM of the generation the image (or disk) was created with; the wrong
    one does not boot, and nothing in the uploaded VHD says which is meant."""
    generation = system.boot_mode.generation
    where = f"{system.os.capitalize()} on volume {system.root.number}"
    if generation not in GENERATION_WHY:
        report.add("generation", WARN, f"{where}: which Hyper-V generation boots it cannot be "
                   f"told ({system.boot_mode.how})", hyperv_generation=None)
        return
    versions = " or ".join(f"V{g}" for g in generation.split(" or "))
    if generation == "1 or 2":
        message = (f"{where} needs a Hyper-V generation 1 or 2 VM: {GENERATION_WHY[generation]}"
                   "; create the image or disk with either --hyper-v-generation V1 or V2")
    else:
        message = (f"{where} needs a Hyper-V generation {generation} VM: "
                   f"{GENERATION_WHY[generation]}; create the image or disk with "
                   f"--hyper-v-generation {versions} (az image create, az disk create, az sig "
                   "image-definition create)"
                   + ("" if generation == "2" else ", the default"))
    report.add("generation", INFO, message, hyperv_generation=versions,
               boot_mode=system.boot_mode.mode)


@dataclass
class ProfileChoice:
    """What --profile and --profile-file asked for, checked before the image is opened."""

    verify_profiles: dict[str, VerifyProfile]
    agent_profiles: dict[str, AgentProfile]
    named: VerifyProfile | None  # the verify profile asked for, if any
    agent_names: list[str]  # agent profiles asked for by --profile (the old meaning)


def choose_profiles(names: list[str] | None, files: list[str] | None) -> ProfileChoice:
    """Read the profiles and sort out --profile: each NAME is a verify profile (at most one)
    or an agent profile (any number, as before verify profiles existed)."""
    from_files = read_profile_files(files or [])
    verify_profiles = {**packaged_profiles(), **from_files.profiles}
    agent_profiles = load_profiles(from_files.agent_files)
    names = names or []
    unknown = [n for n in names if n not in verify_profiles and n not in agent_profiles]
    if unknown:
        raise UsageError(f"--profile {', '.join(unknown)}: no such profile (verify profiles: "
                         f"{', '.join(sorted(verify_profiles))}; agent profiles: "
                         f"{', '.join(sorted(agent_profiles))})")
    chosen = [verify_profiles[n] for n in names if n in verify_profiles]
    if len(chosen) > 1:
        raise UsageError(f"--profile {', '.join(p.id for p in chosen)}: name one verify profile, "
                         "not several")
    if not chosen and len(from_files.profiles) == 1:
        chosen = list(from_files.profiles.values())  # a profile file's own profile is the one
    for profile in chosen:
        missing = [a for a in profile.agents or [] if a not in agent_profiles]
        if missing:
            raise UsageError(f"{profile.source}: [profile] agents names {', '.join(missing)}, "
                             f"no such agent profile (known: {', '.join(sorted(agent_profiles))})")
    return ProfileChoice(verify_profiles, agent_profiles, chosen[0] if chosen else None,
                         [n for n in names if n in agent_profiles and n not in verify_profiles])


def _pick_profile(report: Report, choice: ProfileChoice, boots: list[BootInfo]
                  ) -> VerifyProfile | None:
    found = [b for b in boots if b.os_volumes]
    if choice.named is not None:
        report.profile, report.profile_how = choice.named, "named by --profile"
        return choice.named
    if not found:
        return None
    os_name = found[0].os
    profile = choice.verify_profiles[DEFAULT_PROFILES[os_name]]
    volume = found[0].boot_volume or found[0].os_volumes[0]
    report.profile = profile
    report.profile_how = f"{os_name.capitalize()} found on volume {volume}"
    return profile


def _agent_selection(choice: ProfileChoice, profile: VerifyProfile | None) -> list[AgentProfile]:
    if choice.agent_names:
        return [choice.agent_profiles[n] for n in choice.agent_names]
    if profile is not None and profile.agents is not None:
        return [choice.agent_profiles[n] for n in profile.agents]
    return list(choice.agent_profiles.values())


def _describe_os(system: OsFound) -> str:
    parts = [system.product]
    if system.windows:
        w = system.windows
        parts[0] += f" ({', '.join(p for p in (w.edition, w.installation_type) if p)})" \
            if w.edition or w.installation_type else ""
        if w.version or w.build:
            parts.append(f"version {w.version} build {w.build}".replace("version  ", ""))
    if system.linux and system.linux.kernels:
        parts.append("kernels " + ", ".join(k.version for k in system.linux.kernels))
    parts += [system.architecture or "architecture unknown",
              f"hostname {system.hostname or 'not set'}",
              f"{system.boot_mode.mode} boot: Hyper-V generation {system.boot_mode.generation}"]
    return f"volume {system.root.number}: " + "; ".join(parts)


def _check_guest(report: Report, disk: DiskVolumes, profile: VerifyProfile | None,
                 inspection: Inspection) -> None:
    for system in inspection.systems:
        report.add("os", INFO, _describe_os(system), os=system.os, volume=system.root.number)
        _check_generation(report, system)
    if profile is None:
        return
    report.add("profile", INFO, f"{profile.id}: {profile.name} ({report.profile_how})",
               profile=profile.id, source=profile.source)
    systems = [s for s in inspection.systems if s.os == profile.os]
    if not systems:
        others = ", ".join(f"{s.os.capitalize()} on volume {s.root.number}"
                           for s in inspection.systems) or "no operating system"
        better = [p for p, os_name in (("azure-windows-generalized", "windows"),
                                       ("azure-linux-generalized", "linux"))
                  if any(s.os == os_name for s in inspection.systems)]
        report.add("profile", FAIL, f"profile {profile.id} is for {profile.os.capitalize()}, but "
                   f"the disk holds {others}",
                   fix=f"choose a {better[0].split('-')[1].capitalize()} profile, for example "
                   f"--profile {better[0]}" if better else "")
        return
    gate = Gate(report, profile)
    for system in systems:
        if system.os == "windows":
            check_windows(gate, disk, system)
        else:
            check_linux(gate, disk, system)


def verify(open_chain: Callable[[], Chain], image: str, *, profiles: list[str] | None = None,
           profile_files: list[str] | None = None) -> Report:
    """Run every check; chain problems become failures, not exceptions."""
    report = Report(image)
    choice = choose_profiles(profiles, profile_files)
    try:
        chain = open_chain()
    except UsageError:
        raise
    except VhdfsError as exc:
        report.add("chain", FAIL, str(exc), error=type(exc).__name__)
        report.add("chain", INFO, "the guest checks need the whole chain; fix the chain and "
                   "run vhdfs verify again")
        return report
    with chain:
        _check_chain(report, chain)
        try:
            disk = open_volumes(chain)
        except VhdfsError as exc:
            report.add("partitions", FAIL, str(exc))
            _check_upload(report, chain, image, "none")
            return report
        volumes = ", ".join(f"{v.number}: {v.fs_type or 'no file system'}"
                            + (f' "{v.label}"' if v.label else "") for v in disk.volumes)
        report.add("partitions", PASS if disk.with_fs() else FAIL,
                   f"{disk.table.scheme.upper() if disk.table.scheme != 'none' else 'no'} "
                   f"partition table; volumes {volumes or 'none'}",
                   scheme=disk.table.scheme, volumes=[v.number for v in disk.volumes])
        for warning in disk.table.warnings:
            report.add("partitions", WARN, warning)
        for volume in disk.volumes:
            if volume.fs is None and volume.type_name not in NO_FILE_SYSTEM_EXPECTED:
                report.add("partitions", WARN, f"volume {volume.number} ({volume.type_name}): "
                           f"{volume.error}")
        try:
            boots = find_boot(disk)
            profile = _pick_profile(report, choice, boots)
            selected = _agent_selection(choice, profile)
            found = find_agents(disk, selected)
        except VhdfsError as exc:  # a damaged guest file system
            report.add("guest", FAIL, f"reading the guest files failed: {exc}")
        else:
            _check_boot(report, boots)
            _check_agents(report, disk, found, boots, [p.id for p in selected])
            try:
                report.inspection = inspect_disk(disk, boots)
                _check_guest(report, disk, profile, report.inspection)
            except VhdfsError as exc:
                report.add("guest", FAIL, f"reading the guest files failed: {exc}")
        _check_upload(report, chain, image, disk.table.scheme)
        _check_vm_sizes(report, chain.size)
    return report
