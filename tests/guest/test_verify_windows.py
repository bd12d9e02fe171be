"""verify on Windows images: generalized or not, clean shutdown, hibernation, Remote Desktop,
the other registry settings Azure's guide asks for, the BCD's winload, and the profiles."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.bcdstore import Loader, build_bcd, device_mbr_partition
from tests.fixtures.common import MiB
from tests.fixtures.windows import DEFAULT_DISK_SIGNATURE
from tests.fixtures.windows_state import COMPLETE, GENERALIZED, WindowsState, set_ntfs_dirty
from tests.guest.conftest import SYSTEM_SIZE, add_child, windows_disk

PASSED = "Successfully passed the verification tests."
FAILED = "Failed the verification tests."
WINDOWS_START = 1 * MiB + SYSTEM_SIZE  # volume 2

VARIANTS: dict[str, WindowsState] = {
    "generalized": WindowsState(),
    "not-generalized": WindowsState(image_state=COMPLETE, state_ini=COMPLETE),
    "hibernated": WindowsState(hiberfil=b"HIBR"),
    "resumed": WindowsState(hiberfil=b"wake"),
    "rdp-disabled": WindowsState(deny_rdp=1),
    "settings-off": WindowsState(rdp_port=3390, dhcp=False, san_policy=3,
                                 real_time_is_universal=0, time_zone="Pacific Standard Time",
                                 hibernate_enabled=1, skip_rearm=0),
    "no-hives": WindowsState(with_hives=False, state_ini=None),
}


@pytest.fixture(scope="session")
def windows_variant(tmp_path_factory) -> Callable[[str], Path]:
    """variant name -> a raw Windows disk in that state, built once per session."""
    folder = tmp_path_factory.mktemp("windows-variants")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            path = folder / f"{name}.raw"
            if name == "dirty":
                windows_disk(path, state=VARIANTS["generalized"])
                set_ntfs_dirty(path, WINDOWS_START)
            else:
                windows_disk(path, state=VARIANTS[name])
            built[name] = path
        return built[name]

    return get


def findings(result, status: str, check: str) -> list[str]:
    label = {"fail": "FAIL", "warn": "warn", "ok": "ok", "info": "info"}[status]
    prefix = f"{label:<4}  {check}: "
    return [line.strip()[len(prefix):] for line in result.out.splitlines()
            if line.strip().startswith(prefix.strip()) and line.strip()[:len(prefix)] == prefix]


def fix_after(result, message_part: str) -> str:
    lines = result.out.splitlines()
    index = next(i for i, line in enumerate(lines) if message_part in line)
    assert lines[index + 1].strip().startswith("fix: "), lines[index:index + 2]
    return lines[index + 1].strip()[len("fix: "):]


def report_of(vhdfs, image, *args) -> dict:
    result = vhdfs("verify", image, "--json", *args)
    return json.loads(result.out)


def by_check(report: dict, check: str) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == check]


def test_a_generalized_image_passes_with_every_check_ok(vhdfs, windows_variant):
    image = windows_variant("generalized")
    result = vhdfs("verify", image)
    assert result.code == 0, result.out
    assert result.out.rstrip().endswith(PASSED)
    for check in ("hives", "image-state", "clean-shutdown", "hibernation", "rdp", "rdp-port",
                  "dhcp", "san-policy", "time", "boot-loader"):
        assert findings(result, "ok", check), (check, result.out)
    assert findings(result, "ok", "image-state") == [
        f"generalized: SOFTWARE ...\\Setup\\State\\ImageState is {GENERALIZED}"]
    assert "CurrentControlSet is ControlSet002" in findings(result, "ok", "hives")[0]
    assert findings(result, "info", "activation")[0].startswith("SkipRearm = 1")
    assert "azure-windows-generalized" in findings(result, "info", "profile")[0]
    report = report_of(vhdfs, image)
    assert report["passed"] is True
    assert report["profile"]["id"] == "azure-windows-generalized"
    assert report["profile"]["chosen"] == "Windows found on volume 2"
    system = report["inspection"]["operating_systems"][0]
    assert system["image_state"] == GENERALIZED and system["control_set"] == "ControlSet002"


def test_not_generalized_fails_with_sysprep_as_the_fix(vhdfs, windows_variant):
    image = windows_variant("not-generalized")
    result = vhdfs("verify", image)
    assert result.code == 1
    assert result.out.rstrip().endswith(FAILED)
    [message] = findings(result, "fail", "image-state")
    assert message.startswith(f"not generalized: SOFTWARE ...\\Setup\\State\\ImageState is {COMPLETE}")
    assert "sysprep.exe /generalize /oobe /shutdown" in fix_after(result, message)
    report = report_of(vhdfs, image)
    [finding] = by_check(report, "image-state")
    assert finding["status"] == "fail" and "sysprep.exe /generalize" in finding["fix"]
    assert finding["details"] == {"image_state": COMPLETE, "state_ini": COMPLETE}


def test_the_specialized_profile_inverts_the_image_state(vhdfs, windows_variant):
    specialized = vhdfs("verify", windows_variant("not-generalized"), "--profile",
                        "azure-windows-specialized")
    assert specialized.code == 0, specialized.out
    assert findings(specialized, "ok", "image-state")[0].startswith("specialized:")
    generalized = vhdfs("verify", windows_variant("generalized"), "--profile",
                        "azure-windows-specialized")
    assert generalized.code == 1
    assert findings(generalized, "fail", "image-state")[0].startswith("generalized (")


def test_a_dirty_volume_fails_and_ntfs3g_agrees(vhdfs, windows_variant, tmp_path):
    image = windows_variant("dirty")
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = findings(result, "fail", "clean-shutdown")
    assert message.startswith('volume 2 (NTFS "Windows") is marked dirty ($Volume flags 0x0001)')
    assert "chkdsk C: /f" in fix_after(result, message)
    # an independent reader sees the same flag: ntfs-3g's tools refuse a volume due for chkdsk
    ntfsinfo = shutil.which("ntfsinfo") or "/usr/bin/ntfsinfo"
    volume = tmp_path / "volume2.ntfs"
    with open(image, "rb") as disk, open(volume, "wb") as out:
        disk.seek(WINDOWS_START)
        out.write(disk.read())
    checked = subprocess.run([ntfsinfo, "-m", str(volume)], capture_output=True, text=True)
    assert "scheduled for check" in checked.stdout + checked.stderr


def test_a_hibernated_system_fails_a_resumed_hiberfil_only_warns(vhdfs, windows_variant):
    hibernated = vhdfs("verify", windows_variant("hibernated"))
    assert hibernated.code == 1
    [message] = findings(hibernated, "fail", "clean-shutdown")
    assert "/hiberfil.sys holds a hibernated system (signature 'HIBR')" in message
    assert "powercfg /hibernate off" in fix_after(hibernated, message)
    resumed = vhdfs("verify", windows_variant("resumed"))
    assert resumed.code == 0, resumed.out
    assert "holds an image that was resumed" in findings(resumed, "ok", "clean-shutdown")[0]
    assert findings(resumed, "warn", "hibernation")[0].startswith(
        "hibernation is on: /hiberfil.sys exists (65536 bytes)")


def test_rdp_disabled_is_a_warning_read_from_the_current_control_set(vhdfs, windows_variant):
    result = vhdfs("verify", windows_variant("rdp-disabled"))
    assert result.code == 0, result.out  # a warning: the guide recommends it
    [message] = findings(result, "warn", "rdp")
    assert message.startswith("Remote Desktop is disabled (SYSTEM ControlSet002\\Control\\"
                              "Terminal Server\\fDenyTSConnections = 1)")
    assert "fDenyTSConnections -Value 0" in fix_after(result, message)
    # the stale ControlSet001 says the opposite (0) and port 3390: neither is read
    assert findings(result, "ok", "rdp-port") == ["RDP listens on port 3389"]


def test_a_profile_file_can_make_rdp_a_failure(vhdfs, windows_variant, tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text('[profile]\nid = "strict-windows"\nname = "RDP required"\nos = "windows"\n'
                      'image = "generalized"\n\n[checks]\nrdp = "fail"\n')
    result = vhdfs("verify", windows_variant("rdp-disabled"), "--profile-file", strict)
    assert result.code == 1
    assert findings(result, "fail", "rdp")
    assert not findings(result, "ok", "image-state")  # checks the profile leaves out are off
    assert report_of(vhdfs, windows_variant("rdp-disabled"), "--profile-file",
                     strict)["profile"]["source"] == str(strict)
    strict.write_text('[profile]\nid = "x"\nname = "x"\nos = "windows"\n[checks]\nrpd = "fail"\n')
    bad = vhdfs("verify", windows_variant("generalized"), "--profile-file", strict)
    assert bad.code == 2
    assert bad.err.startswith(f"vhdfs: error: {strict}: [checks] rpd: no such windows check "
                              "(known: hives, image-state,")


def test_the_other_settings_are_warnings_with_their_fixes(vhdfs, windows_variant):
    result = vhdfs("verify", windows_variant("settings-off"))
    assert result.code == 0, result.out
    assert findings(result, "warn", "rdp-port") == [
        "RDP listens on port 3390, but Azure's default rules open 3389"]
    [dhcp] = findings(result, "warn", "dhcp")
    assert "{8E4F2A1C-3B5D-4C6E-9F70-1A2B3C4D5E6F}: 192.168.10.20" in dhcp
    assert findings(result, "warn", "san-policy") == [
        "SAN policy OfflineAll (3): data disks stay offline"]
    assert "san policy=onlineall" in fix_after(result, "SAN policy OfflineAll")
    [time] = findings(result, "warn", "time")
    assert "RealTimeIsUniversal is 0" in time and "Pacific Standard Time" in time
    assert findings(result, "warn", "hibernation") == ["hibernation is on: HibernateEnabled = 1"]
    assert findings(result, "info", "activation")[0].startswith("SkipRearm = 0")


def test_without_hives_the_registry_checks_fail_and_say_why(vhdfs, windows_variant):
    result = vhdfs("verify", windows_variant("no-hives"))
    assert result.code == 1
    hives = findings(result, "fail", "hives")
    assert any("Windows\\System32\\config\\SOFTWARE does not exist" in h for h in hives)
    assert findings(result, "warn", "image-state")[0].startswith("no ImageState")


def test_a_bcd_that_starts_a_missing_winload_fails(vhdfs, tmp_path):
    device = device_mbr_partition(DEFAULT_DISK_SIGNATURE, WINDOWS_START)
    bcd = build_bcd([Loader("Windows Server", device, device,
                            path="\\Windows\\system32\\boot\\winload.exe")])
    windows_disk(tmp_path / "moved-loader.raw", bcd=bcd)
    result = vhdfs("verify", tmp_path / "moved-loader.raw")
    assert result.code == 1
    [message] = findings(result, "fail", "boot-loader")
    assert message == ('the BCD default entry "Windows Server" starts \\Windows\\system32\\'
                       'boot\\winload.exe on volume 2, where it does not exist')
    assert "bcdboot C:\\Windows" in fix_after(result, message)


def test_a_bios_bcd_that_starts_the_uefi_loader_fails(vhdfs, tmp_path):
    # winload.efi on this MBR (BIOS) disk: the BIOS boot manager cannot start a UEFI program
    device = device_mbr_partition(DEFAULT_DISK_SIGNATURE, WINDOWS_START)
    bcd = build_bcd([Loader("Windows Server", device, device,
                            path="\\Windows\\system32\\winload.efi")])
    windows_disk(tmp_path / "efi-loader.raw", bcd=bcd)
    result = vhdfs("verify", tmp_path / "efi-loader.raw")
    assert result.code == 1
    [message] = findings(result, "fail", "boot-loader")
    assert message == ('the BCD default entry "Windows Server" starts \\Windows\\system32\\'
                       'winload.efi, a UEFI program, but this disk boots through the BIOS, whose '
                       'boot manager starts winload.exe')
    assert fix_after(result, message) == (
        "in the VM (or from Windows recovery media): bcdboot C:\\Windows /f BIOS, or bcdedit "
        "/set {default} path \\Windows\\system32\\winload.exe")


def test_a_child_that_deletes_winload_fails_through_the_chain(vhdfs, chain_copy):
    add_child(chain_copy / "child.vhd", chain_copy / "nowinload.vhd",
              {"Windows/System32/winload.exe": None}, volume=2)
    result = vhdfs("verify", chain_copy / "nowinload.vhd")
    assert result.code == 1
    assert findings(result, "fail", "boot")[0].startswith("no volume holds Windows")
    assert vhdfs("verify", chain_copy / "child.vhd").code == 0


def test_the_profile_must_match_the_os_and_vm_role_checks_no_guest_settings(vhdfs,
                                                                           windows_variant):
    image = windows_variant("not-generalized")
    wrong = vhdfs("verify", image, "--profile", "azure-linux-generalized")
    assert wrong.code == 1
    [message] = findings(wrong, "fail", "profile")
    assert message == ("profile azure-linux-generalized is for Linux, but the disk holds Windows "
                       "on volume 2")
    assert "--profile azure-windows-generalized" in fix_after(wrong, message)
    legacy = vhdfs("verify", image, "--profile", "vm-role")
    assert legacy.code == 1  # the VM Role agent is not installed
    assert not findings(legacy, "fail", "image-state")
    assert any(f.startswith("no Azure agent found (profiles: vm-role-agent")
               for f in findings(legacy, "fail", "agent"))
    two = vhdfs("verify", image, "--profile", "vm-role", "--profile", "azure-windows-generalized")
    assert two.code == 2 and "name one verify profile, not several" in two.err


def test_verify_reads_the_state_through_a_chain(vhdfs, windows_chain):
    """The shared three-layer chain's base is the generalized fixture: the hives are read
    through every layer."""
    result = vhdfs("verify", windows_chain.folder / "grandchild.vhd")
    assert result.code == 0, result.out
    assert findings(result, "ok", "image-state")


@pytest.mark.parametrize("variant, check, status, code", [
    ("generalized", "image-state", "pass", 0),
    ("not-generalized", "image-state", "fail", 1),
    ("dirty", "clean-shutdown", "fail", 1),
    ("hibernated", "clean-shutdown", "fail", 1),
    ("resumed", "hibernation", "warn", 0),
    ("rdp-disabled", "rdp", "warn", 0),
    ("settings-off", "san-policy", "warn", 0),
    ("no-hives", "hives", "fail", 1),
])
def test_each_variant_in_json(vhdfs, windows_variant, variant, check, status, code):
    result = vhdfs("verify", windows_variant(variant), "--json")
    assert result.code == code
    report = json.loads(result.out)
    assert report["passed"] is (code == 0)
    assert status in [f["status"] for f in report["findings"] if f["check"] == check]
    if variant != "no-hives":  # there, what cannot be read is a warning without a fix
        problems = [f for f in report["findings"] if f["status"] in ("fail", "warn")]
        assert all(f.get("fix") for f in problems), problems
