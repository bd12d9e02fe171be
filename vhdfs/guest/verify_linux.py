"""The Linux checks of `vhdfs verify`: what Azure's "Prepare Linux for imaging in Azure" guide
asks of an image, read offline from its root file system.

  boot-entry      the boot loader's default entry: its kernel and initrd exist
  console         the kernel command line sends the console to the serial port (console=ttyS0)
  hyperv-drivers  hv_vmbus, hv_storvsc, hv_netvsc built into that kernel, or installed for it
                  and inside its initrd
  provisioning    waagent (/etc/waagent.conf) or cloud-init (Azure datasource) provisions a
                  generalized image; nothing provisions a specialized one
  resource-disk   who formats the resource disk and makes swap there (waagent or cloud-init)
  swap            no swap on the OS disk (a swap partition, or swap in /etc/fstab)
  fstab           file systems named by UUID= or LABEL=, not /dev/sdX
  ssh-host-keys, machine-id, shell-history
                  deprovisioned (generalized images only)
"""

from __future__ import annotations

import re

from vhdfs.errors import VhdfsError
from vhdfs.guest.files import read_text
from vhdfs.guest.initrd import InitrdError, read_initrd
from vhdfs.guest.inspect import OsFound
from vhdfs.guest.inspect.bootloader import BootEntry, locate
from vhdfs.guest.inspect.linux import LinuxInfo, kernel_version_of
from vhdfs.guest.paths import glob, resolve
from vhdfs.guest.verify_gate import Gate
from vhdfs.guest.volumes import DiskVolumes, Volume

HYPERV = ("hv_vmbus", "hv_storvsc", "hv_netvsc")
KCONFIG = {"hv_vmbus": "CONFIG_HYPERV", "hv_storvsc": "CONFIG_HYPERV_STORAGE",
           "hv_netvsc": "CONFIG_HYPERV_NET"}
DEVICE_NAME = re.compile(r"^/dev/(?:sd[a-z]+|hd[a-z]+|vd[a-z]+|xvd[a-z]+|nvme\d+n\d+)(?:p?(\d+))?$")
CONSOLE = re.compile(r"(?:^|\s)console=ttyS0(?:[,\s]|$)")
REBUILD_INITRD = ("rebuild the initrd with the Hyper-V drivers: dracut -f --add-drivers "
                  "\"hv_vmbus hv_netvsc hv_storvsc\" /boot/initramfs-VERSION.img VERSION, or on "
                  "Debian/Ubuntu add them to /etc/initramfs-tools/modules and run "
                  "update-initramfs -u -k VERSION")
DEPROVISION = "in the VM: sudo waagent -force -deprovision+user (or cloud-init clean), then shut down"


def _conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _text(volume: Volume, path: str) -> str | None:
    found = resolve(volume, path)
    if found is None or found.is_dir:
        return None
    return read_text(found, 4 * 1024 * 1024)


def _boot_entry(gate: Gate, lx: LinuxInfo) -> BootEntry | None:
    config = lx.boot
    if config is None:
        gate.problem("boot-entry", "no boot loader configuration found (no grub.cfg with entries, "
                     "no loader entries)", "install the boot loader in the VM (grub-install and "
                     "update-grub, or grub2-mkconfig -o /boot/grub2/grub.cfg)")
        return None
    for problem in config.problems:
        gate.problem("boot-entry", problem, "regenerate the configuration: update-grub (Debian, "
                     "Ubuntu) or grub2-mkconfig -o /boot/grub2/grub.cfg")
    entry = config.default
    if entry is None:
        return None
    where = f"the default entry \"{entry.title}\" ({config.default_how}) of {config.describe()}"
    fix = ("reinstall the kernel package or regenerate the boot configuration (update-grub, or "
           "grub2-mkconfig -o /boot/grub2/grub.cfg) so its entries name installed files")
    missing = []
    if entry.kernel is None:
        missing.append("names no kernel")
    elif locate(entry, entry.kernel) is None:
        missing.append(f"boots {entry.kernel}, which does not exist on volume "
                       f"{entry.volume.number if entry.volume else '?'}")
    if not entry.initrds:
        missing.append("has no initrd line (the kernel must find the root disk alone)")
    for path in entry.initrds:
        if locate(entry, path) is None:
            missing.append(f"loads the initrd {path}, which does not exist")
    if missing:
        gate.problem("boot-entry", f"{where} " + "; ".join(missing), fix, entry=entry.to_json())
    else:
        gate.ok("boot-entry", f"{where}: kernel {entry.kernel} and initrd "
                f"{', '.join(entry.initrds)} exist", entry=entry.to_json())
    return entry


def _console(gate: Gate, entry: BootEntry) -> None:
    if CONSOLE.search(entry.cmdline):
        gate.ok("console", "the kernel command line has console=ttyS0 (Azure's serial console "
                "and boot diagnostics see the boot)")
    else:
        gate.problem("console", f"the kernel command line ({entry.cmdline or 'empty'}) lacks "
                     "console=ttyS0: boot messages never reach Azure's serial console",
                     "add console=ttyS0 earlyprintk=ttyS0 rootdelay=300 to GRUB_CMDLINE_LINUX in "
                     "/etc/default/grub, then update-grub (or grub2-mkconfig)",
                     cmdline=entry.cmdline)


def _builtin(root: Volume, version: str) -> tuple[set[str], set[str], str]:
    """(modules built into the kernel, modules installed for it, where that was read)."""
    builtin: set[str] = set()
    installed: set[str] = set()
    sources = []
    base = f"lib/modules/{version}"
    text = _text(root, f"{base}/modules.builtin")
    if text is not None:
        sources.append(f"/{base}/modules.builtin")
        builtin |= {line.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
                    for line in text.splitlines() if line.strip()}
    else:
        config = _text(root, f"boot/config-{version}")
        if config is not None:
            sources.append(f"/boot/config-{version}")
            settings = _conf(config)
            builtin |= {m for m, option in KCONFIG.items() if settings.get(option) == "y"}
    dep = _text(root, f"{base}/modules.dep")
    if dep is not None:
        sources.append(f"/{base}/modules.dep")
        for line in dep.splitlines():
            path = line.split(":", 1)[0].strip()
            name = path.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
            if name:
                installed.add(name)
    else:
        for pattern in ("kernel/drivers/hv/*.ko*", "kernel/drivers/scsi/hv_*.ko*",
                        "kernel/drivers/net/hyperv/*.ko*"):
            for found in glob(root, f"{base}/{pattern}"):
                installed.add(found.parts[-1].split(".ko")[0].replace("-", "_"))
        sources.append(f"/{base}/kernel")
    return builtin, installed, ", ".join(sources)


def _hyperv_drivers(gate: Gate, lx: LinuxInfo, entry: BootEntry) -> None:
    if not gate.runs("hyperv-drivers") or entry.kernel is None:
        return
    version = kernel_version_of(entry.kernel, lx.kernels)
    if version is None:
        gate.unknown("hyperv-drivers", f"the version of {entry.kernel} cannot be told: the "
                     "Hyper-V drivers were not checked")
        return
    builtin, installed, sources = _builtin(lx.root, version)
    need_initrd = [m for m in HYPERV if m not in builtin]
    absent = [m for m in need_initrd if m not in installed]
    if absent:
        gate.problem("hyperv-drivers", f"{', '.join(absent)} neither built into kernel {version} "
                     f"nor installed for it ({sources})", "install the distribution's kernel "
                     "(its Hyper-V drivers are modules of it), then " + REBUILD_INITRD,
                     kernel=version, builtin=sorted(builtin & set(HYPERV)), absent=absent)
        return
    if not need_initrd:
        gate.ok("hyperv-drivers", f"{', '.join(HYPERV)} are built into kernel {version} "
                f"({sources})", kernel=version, builtin=list(HYPERV))
        return
    initrd = next((locate(entry, p) for p in reversed(entry.initrds) if locate(entry, p)), None)
    if initrd is None:
        return  # boot-entry already failed: there is no initrd to look into
    try:
        contents = read_initrd(initrd, set(need_initrd))
    except (InitrdError, VhdfsError) as exc:
        gate.unknown("hyperv-drivers", f"cannot look inside {initrd.path}: {exc}; whether it "
                     f"holds {', '.join(need_initrd)} is not known", kernel=version)
        return
    missing = [m for m in need_initrd if m not in contents.modules]
    inside = f"{initrd.path} ({contents.describe()})"
    builtin_text = f"; built in: {', '.join(sorted(builtin & set(HYPERV)))}" if builtin & set(
        HYPERV) else ""
    if missing:
        gate.problem("hyperv-drivers", f"the initrd {inside} lacks {', '.join(missing)}: on Azure "
                     "the kernel cannot reach its disk (hv_storvsc, over hv_vmbus) or network"
                     f"{builtin_text}", REBUILD_INITRD.replace("VERSION", version),
                     kernel=version, initrd=initrd.path, missing=missing)
    else:
        gate.ok("hyperv-drivers", f"{', '.join(need_initrd)} installed for kernel {version} and "
                f"inside its initrd {inside}{builtin_text}", kernel=version, initrd=initrd.path)


def _cloud_init(root: Volume) -> tuple[bool, list[str] | None, str]:
    """(installed, the datasource_list, where it was read)."""
    installed = any(resolve(root, p) is not None for p in ("usr/bin/cloud-init",
                                                          "usr/local/bin/cloud-init"))
    datasources: list[str] | None = None
    where = ""
    files = [f for f in ("etc/cloud/cloud.cfg",) if resolve(root, f) is not None]
    files += [f.path.lstrip("/") for f in sorted(glob(root, "etc/cloud/cloud.cfg.d/*.cfg"),
                                                  key=lambda f: f.path)]
    for path in files:  # later files override earlier ones, as cloud-init merges them
        text = _text(root, path) or ""
        match = re.search(r"^datasource_list\s*:\s*\[([^\]]*)\]", text, re.MULTILINE)
        if match:
            datasources = [d.strip().strip("'\"") for d in match.group(1).split(",") if d.strip()]
            where = "/" + path
    return installed, datasources, where


def _provisioning(gate: Gate, lx: LinuxInfo) -> dict[str, str]:
    root = lx.root
    waagent = any(resolve(root, p) is not None for p in ("usr/sbin/waagent", "usr/bin/waagent",
                                                        "usr/local/sbin/waagent"))
    text = _text(root, "etc/waagent.conf")
    conf = _conf(text) if text is not None else {}
    cloud, datasources, ds_where = _cloud_init(root)
    agent = _provisioner(conf, cloud, waagent)
    conf["_provisioner"] = agent
    generalized = gate.profile.image == "generalized"
    if waagent and text is None:
        gate.problem("provisioning", "waagent is installed but /etc/waagent.conf is missing: the "
                     "agent does not start", "reinstall the walinuxagent / WALinuxAgent package")
        return conf
    azure_ok = datasources is None or "Azure" in datasources
    if gate.profile.image == "specialized":
        if agent in ("disabled", ""):
            gate.ok("provisioning", "provisioning is off (Provisioning.Agent=disabled), as a "
                    "specialized disk needs", provisioner=agent)
        else:
            gate.problem("provisioning", f"{agent} would provision this VM, but a specialized "
                         "disk gets no provisioning data", "set Provisioning.Agent=disabled in "
                         "/etc/waagent.conf", provisioner=agent)
        return conf
    if not generalized:
        gate.info("provisioning", f"provisioning agent: {agent or 'none'}", provisioner=agent)
        return conf
    _generalized_provisioning(gate, conf, agent, cloud, azure_ok, datasources, ds_where)
    return conf


def _provisioner(conf: dict[str, str], cloud: bool, waagent: bool) -> str:
    """Who provisions the VM: "cloud-init", "waagent", "disabled", or "" (nothing can)."""
    agent = conf.get("Provisioning.Agent", "").lower()
    if not agent and conf:  # agents before 2.2.45: Provisioning.Enabled / UseCloudInit
        if conf.get("Provisioning.UseCloudInit", "n").lower() == "y":
            agent = "cloud-init"
        elif conf.get("Provisioning.Enabled", "y").lower() == "n":
            agent = "disabled"
        else:
            agent = "waagent"
    if agent in ("", "auto"):
        agent = "cloud-init" if cloud else ("waagent" if waagent else "")
    return agent


def _generalized_provisioning(gate: Gate, conf: dict[str, str], agent: str, cloud: bool,
                              azure_ok: bool, datasources: list[str] | None,
                              ds_where: str) -> None:
    """A generalized image: something must create the user, keys and hostname Azure sends."""
    if agent == "disabled":
        gate.problem("provisioning", "Provisioning.Agent=disabled in /etc/waagent.conf and no "
                     "cloud-init: nothing creates the user, SSH keys and hostname Azure sends",
                     "set Provisioning.Agent=auto (or cloud-init with cloud-init installed)",
                     provisioner=agent)
    elif agent == "cloud-init" and not cloud:
        gate.problem("provisioning", "/etc/waagent.conf hands provisioning to cloud-init, which "
                     "is not installed", "install cloud-init, or set Provisioning.Agent=waagent",
                     provisioner=agent)
    elif agent == "cloud-init" and not azure_ok:
        gate.problem("provisioning", f"cloud-init provisions, but its datasource_list "
                     f"({', '.join(datasources or [])}, in {ds_where}) lacks Azure",
                     "write datasource_list: [ Azure ] to /etc/cloud/cloud.cfg.d/"
                     "91-azure_datasource.cfg", provisioner=agent, datasources=datasources)
    elif agent == "":
        gate.problem("provisioning", "neither waagent nor cloud-init is installed: nothing "
                     "provisions the VM", "install walinuxagent (and cloud-init)", provisioner="")
    else:
        how = f"cloud-init with the Azure datasource ({ds_where or 'its default list'})" \
            if agent == "cloud-init" else "waagent (Provisioning.Agent=" \
            f"{conf.get('Provisioning.Agent', 'auto')} in /etc/waagent.conf)"
        gate.ok("provisioning", f"provisioned by {how}", provisioner=agent)


def _resource_disk(gate: Gate, conf: dict[str, str]) -> None:
    if not conf or not any(k.startswith("ResourceDisk.") for k in conf):
        return
    fmt = conf.get("ResourceDisk.Format", "y").lower() == "y"
    swap = conf.get("ResourceDisk.EnableSwap", "n").lower() == "y"
    size = conf.get("ResourceDisk.SwapSizeMB", "0")
    mount = conf.get("ResourceDisk.MountPoint", "/mnt/resource")
    details = {"format": fmt, "swap": swap, "swap_size_mb": size, "mount_point": mount}
    if conf.get("_provisioner") == "cloud-init" and (fmt or swap):
        gate.problem("resource-disk", "cloud-init provisions, yet waagent is set to format the "
                     "resource disk" + (" and make swap there" if swap else "") + ": both would "
                     "manage it", "in /etc/waagent.conf set ResourceDisk.Format=n and "
                     "ResourceDisk.EnableSwap=n (cloud-init's disk_setup/mounts do it)", **details)
    elif swap and not (size.isdigit() and int(size) > 0):
        gate.problem("resource-disk", f"ResourceDisk.EnableSwap=y with SwapSizeMB={size}: no swap "
                     "is made", "set ResourceDisk.SwapSizeMB to the size wanted (Azure's guide: "
                     "2048)", **details)
    else:
        what = f"waagent formats the resource disk at {mount}" if fmt else \
            "waagent leaves the resource disk alone"
        gate.ok("resource-disk", what + (f", with {size} MB of swap there" if swap else
                                         ", no swap"), **details)


def _swap(gate: Gate, disk: DiskVolumes, lx: LinuxInfo) -> None:
    partitions = [v for v in disk.volumes if v.type_name == "Linux swap"]
    lines = [e for e in lx.fstab if e.fs_type == "swap"]
    problems = [f"volume {v.number} is a swap partition" for v in partitions]
    problems += [f"/etc/fstab line {e.line} swaps on {e.spec}" for e in lines]
    if problems:
        gate.problem("swap", "swap on the OS disk: " + "; ".join(problems), "remove the swap "
                     "partition and its fstab line; let waagent (ResourceDisk.EnableSwap=y) or "
                     "cloud-init put swap on the resource disk",
                     partitions=[v.number for v in partitions], fstab=[e.line for e in lines])
    else:
        gate.ok("swap", "no swap partition or swap line on the OS disk")


def _fstab(gate: Gate, disk: DiskVolumes, lx: LinuxInfo) -> None:
    bad = []
    for entry in lx.fstab:
        match = DEVICE_NAME.match(entry.spec)
        if not match:
            continue
        volume = next((v for v in disk.volumes
                       if match.group(1) and v.number == int(match.group(1))), None)
        better = f"UUID={volume.uuid}" if volume is not None and volume.uuid else \
            "UUID=... (blkid shows it)"
        bad.append((entry, better))
    if bad:
        text = "; ".join(f"line {e.line} mounts {e.spec} on {e.mountpoint}" for e, _ in bad)
        fix = "; ".join(f"write {better} instead of {e.spec}" for e, better in bad)
        gate.problem("fstab", f"/etc/fstab names disks by device name ({text}): on Azure the "
                     "names change (the resource disk may take /dev/sdb), so the wrong disk or "
                     "none is mounted", fix + " in /etc/fstab",
                     lines=[e.to_json() for e, _ in bad])
    elif lx.fstab:
        gate.ok("fstab", f"/etc/fstab names its {len(lx.fstab)} file system(s) by UUID, LABEL or "
                "another stable name")
    else:
        gate.ok("fstab", "no /etc/fstab entries (nothing to mount by name)")


def _deprovisioned(gate: Gate, lx: LinuxInfo) -> None:
    root = lx.root
    keys = [f.path for f in glob(root, "etc/ssh/ssh_host_*_key")]
    if keys:
        gate.problem("ssh-host-keys", f"SSH host keys are present ({', '.join(keys)}): every VM "
                     "made from the image would share them", DEPROVISION, keys=keys)
    else:
        gate.ok("ssh-host-keys", "no SSH host keys (each VM makes its own)")
    machine_id = _text(root, "etc/machine-id")
    if machine_id is not None and machine_id.strip():
        gate.problem("machine-id", f"/etc/machine-id is set ({machine_id.strip()[:32]}): every VM "
                     "made from the image would have the same machine ID (and DHCP client id)",
                     "truncate -s 0 /etc/machine-id (cloud-init clean --machine-id does it)")
    else:
        gate.ok("machine-id", "/etc/machine-id is " + ("empty" if machine_id is not None else
                                                        "absent") + " (set at first boot)")
    histories = []
    for pattern in ("root/.bash_history", "root/.zsh_history", "home/*/.bash_history",
                    "home/*/.zsh_history"):
        for found in glob(root, pattern):
            if not found.is_dir and int(found.file.info.meta.size) > 0:
                histories.append(found.path)
    if histories:
        gate.problem("shell-history", f"shell history left behind: {', '.join(histories)}",
                     "rm -f " + " ".join(histories) + "; export HISTSIZE=0 before shutting down",
                     files=histories)
    else:
        gate.ok("shell-history", "no shell history left in /root or /home")


def check_linux(gate: Gate, disk: DiskVolumes, found: OsFound) -> None:
    lx = found.linux
    if lx is None:
        return
    entry = _boot_entry(gate, lx)
    if entry is not None:
        _console(gate, entry)
        _hyperv_drivers(gate, lx, entry)
    conf = _provisioning(gate, lx)
    _resource_disk(gate, conf)
    _swap(gate, disk, lx)
    _fstab(gate, disk, lx)
    if gate.profile.image == "generalized":
        _deprovisioned(gate, lx)
