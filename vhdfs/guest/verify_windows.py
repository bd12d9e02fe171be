"""The Windows checks of `vhdfs verify`: what Azure's "Prepare a Windows VHD or VHDX to upload
to Azure" guide asks of an image, read offline from its hives and volumes.

  hives           SYSTEM and SOFTWARE can be read (everything below needs them)
  image-state     Sysprep's ImageState: generalized (or, for a specialized disk, not)
  clean-shutdown  the NTFS dirty flag, a hibernated system in hiberfil.sys, hives with
                  unapplied transaction logs
  hibernation     hibernation and Fast Startup off
  activation      SkipRearm (reported only)
  rdp, rdp-port   Remote Desktop enabled, on port 3389
  dhcp            no static address; the DHCP client service starts automatically
  san-policy      SanPolicy OnlineAll, so data disks come online
  time            RealTimeIsUniversal = 1 (Azure's clock is UTC)
  boot-loader     the BCD default entry's winload exists on the partition it names
"""

from __future__ import annotations

from vhdfs.errors import VhdfsError
from vhdfs.guest.boot import device_volume
from vhdfs.guest.inspect import OsFound
from vhdfs.guest.inspect.windows import WindowsInfo
from vhdfs.guest.ntfsstate import hiberfile, ntfs_volume_state
from vhdfs.guest.paths import resolve
from vhdfs.guest.verify_gate import Gate
from vhdfs.guest.volumes import DiskVolumes

GENERALIZED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
COMPLETE = "IMAGE_STATE_COMPLETE"
SYSPREP = ("in the VM run C:\\Windows\\System32\\Sysprep\\sysprep.exe /generalize /oobe "
           "/shutdown, then take the disk without starting the VM again")
TS_POLICY = "Policies\\Microsoft\\Windows NT\\Terminal Services"
SAN_POLICIES = {1: "OnlineAll", 2: "OfflineShared", 3: "OfflineAll", 4: "OfflineInternal"}
SERVICE_STARTS = {0: "boot", 1: "system", 2: "automatic", 3: "manual", 4: "disabled"}


def _image_state(gate: Gate, win: WindowsInfo) -> None:
    state = win.image_state or win.image_state_ini
    where = "SOFTWARE ...\\Setup\\State\\ImageState" if win.image_state else \
        "Windows\\Setup\\State\\State.ini"
    details = {"image_state": win.image_state, "state_ini": win.image_state_ini}
    if state is None:
        gate.unknown("image-state", "no ImageState (neither in the SOFTWARE hive nor in "
                     "Windows\\Setup\\State\\State.ini): whether Sysprep ran cannot be told",
                     SYSPREP if gate.profile.image == "generalized" else "", **details)
        return
    if win.image_state and win.image_state_ini and win.image_state != win.image_state_ini:
        gate.info("image-state", f"State.ini says {win.image_state_ini} but the registry says "
                  f"{win.image_state}; Windows goes by the registry", **details)
    expected = gate.profile.image
    if expected == "generalized":
        if state == GENERALIZED:
            gate.ok("image-state", f"generalized: {where} is {state}", **details)
        elif state == COMPLETE:
            gate.problem("image-state", f"not generalized: {where} is {state} (Windows is set up "
                         "and has run; Azure cannot provision it as a new VM)", SYSPREP, **details)
        else:
            gate.problem("image-state", f"{where} is {state}, not {GENERALIZED} (Sysprep did not "
                         "finish /generalize /oobe)", SYSPREP, **details)
    elif expected == "specialized":
        if state == COMPLETE:
            gate.ok("image-state", f"specialized: {where} is {state} (set up, starts as it is)",
                    **details)
        elif state == GENERALIZED:
            gate.problem("image-state", f"generalized ({where} is {state}): a VM started from it "
                         "as a specialized disk waits in Windows Setup for answers nobody gives",
                         "upload it as a generalized image (vhdfs verify --profile "
                         "azure-windows-generalized) or use the VM's disk from before Sysprep",
                         **details)
        else:
            gate.problem("image-state", f"{where} is {state}: Windows Setup has not finished",
                         "start the VM, let Windows Setup finish, and shut it down cleanly",
                         **details)
    else:
        gate.info("image-state", f"{where} is {state}", **details)


def _clean_shutdown(gate: Gate, disk: DiskVolumes, found: OsFound) -> None:
    win = found.windows
    volumes = [found.root]
    if found.system_volume is not None and found.system_volume != found.root.number:
        volumes.append(disk.get(found.system_volume))
    clean = True
    for volume in volumes:
        if volume.fs_type != "NTFS":
            continue
        try:
            state = ntfs_volume_state(volume)
        except VhdfsError as exc:
            gate.unknown("clean-shutdown", f"{volume.describe()}: $Volume cannot be read: {exc}")
            clean = False
            continue
        if state is not None and state.dirty:
            clean = False
            gate.problem("clean-shutdown", f"{volume.describe()} is marked dirty ($Volume flags "
                         f"0x{state.flags:04x}): Windows did not finish with it, chkdsk runs at "
                         "the next start", "start the VM, run chkdsk C: /f (it runs at the "
                         "restart), then shut down with shutdown /s /t 0; a volume written on "
                         "Linux must be unmounted cleanly (ntfs-3g clears the flag)",
                         volume=volume.number, flags=state.flags)
    hiber = hiberfile(found.root)
    if hiber is not None and hiber.hibernated:
        clean = False
        gate.problem("clean-shutdown", f"{hiber.describe()} on volume {found.root.number}: the VM "
                     "was hibernated (or shut down with Fast Startup), not shut down",
                     "start the VM, run powercfg /hibernate off, then shut down with "
                     "shutdown /s /t 0", path=hiber.path, signature=hiber.signature.hex())
    for hive in (win.system, win.software):
        if hive is not None and hive.dirty:
            clean = False
            gate.problem("clean-shutdown", f"{hive.where}: its two sequence numbers differ, so "
                         "changes wait in its transaction logs (Windows did not shut down "
                         "cleanly; what vhdfs read from it may be stale)",
                         "start the VM and shut it down with shutdown /s /t 0")
    if clean:
        gate.ok("clean-shutdown", f"volume {found.root.number} is clean (NTFS dirty flag clear)"
                + (f"; {hiber.describe()}" if hiber else "; no hiberfil.sys")
                + ("; hives consistent" if win.system or win.software else ""))


def _hibernation(gate: Gate, found: OsFound) -> None:
    win = found.windows
    system = win.system
    enabled = system.value(win.ccs("Control\\Power"), "HibernateEnabled") if system else None
    fast = system.value(win.ccs("Control\\Session Manager\\Power"), "HiberbootEnabled") \
        if system else None
    hiber = hiberfile(found.root)
    reasons = []
    if enabled == 1:
        reasons.append("HibernateEnabled = 1")
    if fast == 1:
        reasons.append("Fast Startup (HiberbootEnabled = 1) hibernates at every shutdown")
    if hiber is not None and not hiber.hibernated:
        reasons.append(f"{hiber.path} exists ({hiber.size} bytes)")
    if reasons:
        gate.problem("hibernation", "hibernation is on: " + "; ".join(reasons),
                     "in the VM run powercfg /hibernate off (which also removes hiberfil.sys "
                     "and turns Fast Startup off)", hibernate_enabled=enabled,
                     hiberboot_enabled=fast)
    elif system is None:
        gate.unknown("hibernation", "the SYSTEM hive is unreadable: hibernation cannot be told")
    else:
        gate.ok("hibernation", "hibernation is off (HibernateEnabled = "
                f"{enabled if enabled is not None else 'not set'}, no hiberfil.sys)")


def _activation(gate: Gate, win: WindowsInfo) -> None:
    if win.software is None:
        return
    skip = win.software.value("Microsoft\\Windows NT\\CurrentVersion\\SoftwareProtectionPlatform",
                              "SkipRearm")
    if skip == 1:
        gate.info("activation", "SkipRearm = 1: Sysprep keeps the activation state and the rearm "
                  "count (the image can be generalized again without using a rearm)",
                  skip_rearm=skip)
    else:
        gate.info("activation", f"SkipRearm = {skip if skip is not None else 'not set'}: each "
                  "Sysprep /generalize resets activation and uses one of the few rearms",
                  skip_rearm=skip)


def _remote_desktop(gate: Gate, win: WindowsInfo) -> None:
    system = win.system
    terminal = win.ccs("Control\\Terminal Server")
    deny = system.value(terminal, "fDenyTSConnections")
    policy = win.software.value(TS_POLICY, "fDenyTSConnections") if win.software else None
    fix = ("in the VM: Set-ItemProperty -Path 'HKLM:\\SYSTEM\\CurrentControlSet\\Control\\"
           "Terminal Server' -Name fDenyTSConnections -Value 0 (and the same under "
           "HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows NT\\Terminal Services)")
    if policy == 1:
        gate.problem("rdp", "Remote Desktop is turned off by policy (SOFTWARE\\Policies\\...\\"
                     "Terminal Services fDenyTSConnections = 1): nobody can sign in over RDP",
                     fix, policy=policy, setting=deny)
    elif deny == 1 and policy != 0:
        gate.problem("rdp", f"Remote Desktop is disabled (SYSTEM {terminal}\\fDenyTSConnections "
                     "= 1): nobody can sign in over RDP", fix, policy=policy, setting=deny)
    else:
        gate.ok("rdp", f"Remote Desktop is enabled (fDenyTSConnections = "
                f"{deny if deny is not None else 'not set'})", policy=policy, setting=deny)
    port = system.value(win.ccs("Control\\Terminal Server\\WinStations\\RDP-Tcp"), "PortNumber")
    if port is None or port == 3389:
        gate.ok("rdp-port", f"RDP listens on port {port or 3389}", port=port)
    else:
        gate.problem("rdp-port", f"RDP listens on port {port}, but Azure's default rules open "
                     "3389", "set PortNumber back to 3389 under HKLM:\\SYSTEM\\"
                     "CurrentControlSet\\Control\\Terminal Server\\WinStations\\RDP-Tcp (change "
                     "it after deployment if you must)", port=port)


def _dhcp(gate: Gate, win: WindowsInfo) -> None:
    system = win.system
    interfaces = win.ccs("Services\\Tcpip\\Parameters\\Interfaces")
    static = []
    for name in system.subkeys(interfaces):
        values = system.values(f"{interfaces}\\{name}")
        addresses = [a for a in values.get("IPAddress") or [] if a and a != "0.0.0.0"]
        if values.get("EnableDHCP") == 0 and addresses:
            static.append(f"{name}: {', '.join(addresses)}")
    start = system.value(win.ccs("Services\\Dhcp"), "Start")
    if static:
        gate.problem("dhcp", "static IP address(es), which Azure's network does not route: "
                     + "; ".join(static), "in the VM set every adapter to DHCP (Set-NetIPInterface "
                     "-Dhcp Enabled, or netsh interface ip set address NAME dhcp)", static=static)
    elif start is not None and start != 2:
        gate.problem("dhcp", f"the DHCP client service starts {SERVICE_STARTS.get(start, start)}, "
                     "not automatically: the VM gets no address", "Set-Service -Name Dhcp "
                     "-StartupType Automatic", start=start)
    else:
        gate.ok("dhcp", "network adapters use DHCP (no static address), the DHCP client starts "
                "automatically")


def _san_policy(gate: Gate, win: WindowsInfo) -> None:
    policy = win.system.value(win.ccs("Services\\partmgr\\Parameters"), "SanPolicy")
    fix = "in the VM: diskpart, then san policy=onlineall"
    if policy == 1:
        gate.ok("san-policy", "SAN policy OnlineAll: new disks come online", san_policy=policy)
    elif policy is None:
        if "Server" in win.installation_type:
            gate.problem("san-policy", "SAN policy not set: Windows Server's default "
                         "(OfflineShared) leaves data disks offline", fix, san_policy=None)
        else:
            gate.ok("san-policy", "SAN policy not set (OnlineAll, the client default)")
    else:
        gate.problem("san-policy", f"SAN policy {SAN_POLICIES.get(policy, policy)} ({policy}): "
                     "data disks stay offline", fix, san_policy=policy)


def _time(gate: Gate, win: WindowsInfo) -> None:
    key = win.ccs("Control\\TimeZoneInformation")
    universal = win.system.value(key, "RealTimeIsUniversal")
    zone = win.system.value(key, "TimeZoneKeyName") or "not set"
    if universal == 1:
        gate.ok("time", f"the hardware clock is read as UTC (RealTimeIsUniversal = 1); time zone "
                f"{zone}", time_zone=zone)
    else:
        gate.problem("time", f"RealTimeIsUniversal is {universal if universal is not None else 'not set'}"
                     f": Windows reads Azure's UTC clock as local time ({zone})",
                     "Set-ItemProperty -Path HKLM:\\SYSTEM\\CurrentControlSet\\Control\\"
                     "TimeZoneInformation -Name RealTimeIsUniversal -Value 1 -Type DWord; "
                     "Set-Service -Name w32time -StartupType Automatic", time_zone=zone)


LOADER_OF = {"UEFI": "winload.efi", "BIOS": "winload.exe"}


def _loader_for_other_firmware(firmware: str, path: str) -> str:
    """Why a loader path cannot start under this firmware ('' when it can): the UEFI boot
    manager starts winload.efi, the BIOS one winload.exe."""
    name = path.rsplit("\\", 1)[-1].lower()
    if firmware == "UEFI" and name.endswith(".exe"):
        return ("a BIOS program, but this disk boots through UEFI, whose boot manager starts "
                "winload.efi")
    if firmware == "BIOS" and name.endswith(".efi"):
        return ("a UEFI program, but this disk boots through the BIOS, whose boot manager starts "
                "winload.exe")
    return ""


def _boot_loader(gate: Gate, disk: DiskVolumes, found: OsFound) -> None:
    boot = found.boot
    loader = boot.loader if boot else None
    if loader is None or boot.system_volume is None:
        return  # the boot check already said why there is no default entry
    system = disk.get(boot.system_volume)
    device = loader.device or loader.osdevice
    target = device_volume(disk, device, system) if device else None
    path = loader.path or "\\Windows\\system32\\winload.exe"
    if target is None or target.fs is None:
        gate.problem("boot-loader", f"the BCD default entry \"{loader.description}\" reads "
                     f"{path} from the {device.describe() if device else 'no device'}, which is "
                     "not a readable volume of this disk",
                     "in the VM: bcdedit /set {default} device partition=C:")
        return
    wrong = _loader_for_other_firmware(boot.firmware, path)
    if wrong:
        gate.problem("boot-loader", f"the BCD default entry \"{loader.description}\" starts "
                     f"{path}, {wrong}", "in the VM (or from Windows recovery media): bcdboot "
                     f"C:\\Windows /f {boot.firmware}, or bcdedit /set {{default}} path "
                     f"\\Windows\\system32\\{LOADER_OF[boot.firmware]}", path=path)
    elif resolve(target, path) is None:
        gate.problem("boot-loader", f"the BCD default entry \"{loader.description}\" starts "
                     f"{path} on volume {target.number}, where it does not exist",
                     "in the VM (or from recovery media): bcdboot C:\\Windows, or bcdedit /set "
                     "{default} path \\Windows\\system32\\winload.exe (winload.efi on UEFI)",
                     volume=target.number, path=path)
    else:
        gate.ok("boot-loader", f"the BCD default entry \"{loader.description}\" starts {path}, "
                f"which exists on volume {target.number}", volume=target.number, path=path)


def check_windows(gate: Gate, disk: DiskVolumes, found: OsFound) -> None:
    win = found.windows
    if win is None:
        return
    for problem in win.problems:
        gate.problem("hives", problem, "the checks that read the registry need Windows\\System32"
                     "\\config\\SYSTEM and SOFTWARE; make sure the volume holds a whole Windows")
    if not win.problems:
        gate.ok("hives", f"SYSTEM and SOFTWARE read ({win.product}, build {win.build}; "
                f"CurrentControlSet is {win.control_set})")
    _image_state(gate, win)
    _clean_shutdown(gate, disk, found)
    _hibernation(gate, found)
    _activation(gate, win)
    if win.system is not None and win.control_set:
        _remote_desktop(gate, win)
        _dhcp(gate, win)
        _san_policy(gate, win)
        _time(gate, win)
    _boot_loader(gate, disk, found)
