"""verify and inspect on a Windows GPT disk as Azure's generation 2 VMs boot it (UEFI): the
EFI system partition's boot files, the BCD that names the Windows partition by GUID, the
generation the image must be created with; and the MBR (BIOS) boot files the other way."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.bcdstore import Loader, build_bcd, build_gpt_bcd, device_gpt_partition
from tests.fixtures.content import find_distlib_launcher
from tests.fixtures.partitions import GPT_TYPE_ESP
from tests.fixtures.windows_gpt import (
    DEFAULT_GPT_DISK_GUID,
    ESP_GUID,
    FALLBACK,
    GPT_TYPE_BASIC_DATA,
    MANAGER,
    RECOVERY_GUID,
    STORE,
    WINDOWS_GUID,
    build_windows_gpt_disk,
)
from tests.guest.conftest import add_child
from tests.guest.test_verify_windows import by_check, findings, fix_after, report_of
from vhdfs.guest.bcd import read_bcd

MiB = 1024 * 1024
PASSED = "Successfully passed the verification tests."
FAILED = "Failed the verification tests."
GPT_SIZE = 96 * MiB
UEFI_FIX = ("in the VM (or from Windows recovery media): mountvol S: /s, then bcdboot C:\\Windows "
            "/s S: /f UEFI (writes bootmgfw.efi, bootx64.efi and the BCD)")
ESP = 'the EFI system partition volume 1 (FAT32)'


def gpt_disk(path: Path, **kwargs) -> dict:
    return build_windows_gpt_disk(path, kwargs.pop("size", GPT_SIZE), **kwargs)


@pytest.fixture(scope="module")
def gpt_raw(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gpt") / "windows-gpt.raw"
    return path, gpt_disk(path)


def copy_of(gpt_raw, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copyfile(gpt_raw[0], copy)
    return copy


def sgdisk(*args: str | Path) -> str:
    done = subprocess.run(["sgdisk", *map(str, args)], capture_output=True, text=True, check=True)
    return done.stdout


def test_the_fixture_is_the_layout_windows_setup_leaves(gpt_raw):
    """Independent witness: sgdisk reads our GPT as ESP, MSR, basic data and WinRE."""
    raw, layout = gpt_raw
    table = sgdisk("-p", raw)
    assert f"Disk identifier (GUID): {DEFAULT_GPT_DISK_GUID}" in table
    codes = re.findall(r"^\s+(\d)\s+\d+\s+\d+\s+\S+ \S+\s+(\S{4})", table, re.MULTILINE)
    assert codes == [("1", "EF00"), ("2", "0C01"), ("3", "0700"), ("4", "2700")]
    windows = sgdisk("-i", "3", raw)
    assert f"Partition unique GUID: {WINDOWS_GUID}" in windows
    recovery = sgdisk("-i", "4", raw)
    assert f"Partition unique GUID: {RECOVERY_GUID}" in recovery
    assert "Attribute flags: 8000000000000001" in recovery  # required, no drive letter
    assert [p["guid"] for p in layout["partitions"]][0] == ESP_GUID


def test_a_gpt_windows_disk_passes_and_needs_generation_2(vhdfs, gpt_raw):
    raw, _ = gpt_raw
    result = vhdfs("verify", raw)
    assert result.code == 0, result.out
    assert result.out.rstrip().endswith(PASSED)
    boot = findings(result, "ok", "boot")
    assert boot[0] == ("the EFI system partition, volume 1, holds \\EFI\\Microsoft\\Boot\\"
                       "bootmgfw.efi (x64 EFI application), \\EFI\\Microsoft\\Boot\\BCD, "
                       "\\EFI\\Boot\\bootx64.efi (x64 EFI application)")
    assert boot[1].startswith("volume 3 with the Azure Windows VM Agent")
    assert boot[1].endswith(f'(the BCD on volume 1: default entry "Windows Server (partition '
                            f'{WINDOWS_GUID})" boots volume 3)')
    assert findings(result, "info", "generation") == [
        "Windows on volume 3 needs a Hyper-V generation 2 VM: it boots through UEFI from a GPT "
        "disk, and a generation 1 VM's BIOS does not boot a GPT disk; create the image or disk "
        "with --hyper-v-generation V2 (az image create, az disk create, az sig "
        "image-definition create)"]
    assert findings(result, "ok", "boot-loader") == [
        f'the BCD default entry "Windows Server (partition {WINDOWS_GUID})" starts '
        "\\Windows\\system32\\winload.efi, which exists on volume 3"]
    assert "UEFI boot: Hyper-V generation 2" in findings(result, "info", "os")[0]
    # the recovery partition and the MSR are no reason for a warning
    assert not [line for line in result.out.splitlines() if line.strip().startswith("warn")]

    report = report_of(vhdfs, raw)
    assert report["passed"] is True
    [generation] = by_check(report, "generation")
    assert generation["details"] == {"hyperv_generation": "V2", "boot_mode": "UEFI"}
    files = by_check(report, "boot")[0]["details"]
    assert files["firmware"] == "UEFI"
    assert [(f["path"], f["present"]) for f in files["boot_files"]] == [
        ("\\EFI\\Microsoft\\Boot\\bootmgfw.efi", True), ("\\EFI\\Microsoft\\Boot\\BCD", True),
        ("\\EFI\\Boot\\bootx64.efi", True)]
    assert files["boot_files"][0]["efi"] == {"path": "/EFI/Microsoft/Boot/bootmgfw.efi",
                                             "machine": "x64", "subsystem": 10, "problem": None}


def test_inspect_reports_uefi_generation_2_and_the_boot_manager(vhdfs, gpt_raw):
    raw, _ = gpt_raw
    result = vhdfs("inspect", raw)
    assert result.code == 0, result.err
    lines = [line.strip() for line in result.out.splitlines()]
    assert lines[0].endswith(": 96 MiB, GPT")
    for expected in (
            'root:          volume 3 (NTFS "Windows"); system volume 1',
            "boot:          UEFI: Hyper-V generation 2 (a GPT disk with an EFI system partition "
            "(volume 1))",
            "azure:         create the image or disk with --hyper-v-generation V2",
            "boot manager:  volume 1: \\EFI\\Microsoft\\Boot\\bootmgfw.efi, "
            "\\EFI\\Microsoft\\Boot\\BCD, \\EFI\\Boot\\bootx64.efi",
            f'boot entry:    "Windows Server (partition {WINDOWS_GUID})" starts '
            "\\Windows\\system32\\winload.efi on volume 3"):
        assert expected in lines, (expected, result.out)
    report = json.loads(vhdfs("inspect", raw, "--json").out)
    assert report["partition_table"] == "gpt"
    [system] = report["operating_systems"]
    assert system["root_volume"] == 3 and system["system_volume"] == 1
    assert system["boot"]["mode"] == "UEFI" and system["boot"]["hyperv_generation"] == "2"
    assert system["boot"]["azure_hyper_v_generation"] == "V2"
    manager = system["boot_manager"]
    assert manager["firmware"] == "UEFI" and manager["boot_volume"] == 3
    # the BCD's device element, as decoded, names what sgdisk reads on the disk
    assert manager["default_entry"]["osdevice"] == (
        f"partition {WINDOWS_GUID} of the disk {DEFAULT_GPT_DISK_GUID}")
    assert f"Partition unique GUID: {WINDOWS_GUID}" in sgdisk("-i", "3", raw)
    assert manager["problems"] == []


def test_the_mbr_disk_reports_bios_generation_1_and_its_boot_files(vhdfs, windows_raw):
    raw, _ = windows_raw
    result = vhdfs("verify", raw)
    assert result.code == 0, result.out
    assert findings(result, "ok", "boot")[0] == (
        "the system partition (active), volume 1, holds \\bootmgr, \\Boot\\BCD")
    assert findings(result, "info", "generation") == [
        "Windows on volume 2 needs a Hyper-V generation 1 VM: it boots through the BIOS, and a "
        "generation 2 VM's UEFI firmware does not boot it; create the image or disk with "
        "--hyper-v-generation V1 (az image create, az disk create, az sig image-definition "
        "create), the default"]
    inspect = vhdfs("inspect", raw)
    assert "  azure:         create the image or disk with --hyper-v-generation V1" in inspect.out
    assert "  boot manager:  volume 1: \\bootmgr, \\Boot\\BCD" in inspect.out


@pytest.mark.parametrize("path, what", [
    (MANAGER, "the Windows Boot Manager"),
    (STORE, "the boot configuration store"),
    (FALLBACK, "the default loader a new VM's firmware starts"),
])
def test_a_missing_esp_file_fails_and_names_it(vhdfs, tmp_path, path, what):
    image = tmp_path / "missing.raw"
    gpt_disk(image, esp_files={path: None})
    result = vhdfs("verify", image)
    assert result.code == 1
    assert result.out.rstrip().endswith(FAILED)
    shown = "\\" + path.replace("/", "\\")
    [message] = [f for f in findings(result, "fail", "boot") if "has no" in f]
    assert message.startswith(f"Windows: {ESP} has no {shown} ({what}")
    assert fix_after(result, message) == UEFI_FIX
    report = report_of(vhdfs, image)
    failed = [f for f in by_check(report, "boot") if f["status"] == "fail"]
    assert failed[0]["fix"] == UEFI_FIX
    inspect = json.loads(vhdfs("inspect", image, "--json").out)
    files = inspect["operating_systems"][0]["boot_manager"]["files"]
    assert [f["present"] for f in files if f["path"] == shown] == [False]


def test_a_boot_manager_that_is_no_efi_application_fails(vhdfs, tmp_path):
    # a Windows console program (pip's launcher) where bootmgfw.efi belongs; zeros as bootx64.efi
    image = tmp_path / "not-efi.raw"
    gpt_disk(image, esp_files={MANAGER: find_distlib_launcher().read_bytes(),
                               FALLBACK: bytes(4096)})
    result = vhdfs("verify", image)
    assert result.code == 1
    failures = findings(result, "fail", "boot")
    assert f"Windows: {ESP}: \\EFI\\Microsoft\\Boot\\bootmgfw.efi is a PE image for subsystem 3, " \
           "not an EFI program, not an EFI application, so the firmware does not start it" \
        in failures, result.out
    assert f"Windows: {ESP}: \\EFI\\Boot\\bootx64.efi is empty or all zeros, so the firmware " \
           "does not start it" in failures


def test_a_bcd_naming_a_partition_guid_that_does_not_exist_fails(vhdfs, tmp_path):
    other = "9F9F9F9F-0000-4000-8000-00000000BEEF"
    image = tmp_path / "other-partition.raw"
    layout = gpt_disk(image, bcd=build_gpt_bcd(DEFAULT_GPT_DISK_GUID, other, ESP_GUID))
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "no partition" in f]
    guids = ", ".join(f"{p['number']}: {p['guid']}" for p in layout["partitions"])
    assert message == (
        f'Windows: the BCD on volume 1: default entry "Windows Server (partition {other})" boots '
        f"the partition {other} of the disk {DEFAULT_GPT_DISK_GUID}, where this disk has no "
        f"partition (its partitions are {guids})")
    assert fix_after(result, message).startswith(UEFI_FIX + "; it rewrites the store for this "
                                                 "disk")
    # the agent is then not on a volume the disk boots
    assert any(f.startswith("found Azure Windows VM Agent") for f in findings(result, "fail",
                                                                              "boot"))


def test_a_disk_given_a_new_guid_fails_until_the_old_one_is_back(vhdfs, gpt_raw, tmp_path):
    image = copy_of(gpt_raw, tmp_path, "new-guid.raw")
    new_guid = "11111111-2222-4333-8444-555555555555"
    sgdisk(f"--disk-guid={new_guid}", image)  # what a cloning tool does
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "GUID" in f]
    assert message == (
        f'Windows: the BCD on volume 1: default entry "Windows Server (partition {WINDOWS_GUID})" '
        f"boots partition {WINDOWS_GUID} of the GPT disk {DEFAULT_GPT_DISK_GUID}, but this "
        f"disk's GUID is {new_guid}")
    fix = fix_after(result, message)
    assert fix.endswith(f"or, if a tool gave the disk a new GUID, put the old one back: sgdisk "
                        f"--disk-guid={DEFAULT_GPT_DISK_GUID} on the raw disk")
    sgdisk(f"--disk-guid={DEFAULT_GPT_DISK_GUID}", image)  # the fix, as the finding says
    assert vhdfs("verify", image).code == 0


def test_esp_files_on_a_basic_data_partition_fail_with_the_type_fix(vhdfs, tmp_path):
    image = tmp_path / "no-esp-type.raw"
    gpt_disk(image, esp_type=GPT_TYPE_BASIC_DATA)
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "EFI system partition" in f]
    assert message == (
        "Windows: the GPT disk has no EFI system partition: volume 1 (FAT32) holds "
        "\\EFI\\Microsoft\\Boot, but its partition type is Microsoft basic data "
        f"({GPT_TYPE_BASIC_DATA}), so UEFI firmware does not look at it")
    fix = fix_after(result, message)
    assert fix.startswith("make it the EFI system partition: sgdisk --typecode=1:EF00 on the raw "
                          "disk")
    sgdisk("--typecode=1:EF00", image)  # the fix
    fixed = vhdfs("verify", image)
    assert fixed.code == 0, fixed.out


def test_a_gpt_disk_without_any_esp_fails(vhdfs, gpt_raw, tmp_path):
    image = copy_of(gpt_raw, tmp_path, "no-esp.raw")
    sgdisk("--delete=1", image)
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "EFI system partition" in f]
    assert message == (f"Windows: the GPT disk has no EFI system partition (type {GPT_TYPE_ESP}), "
                       "so UEFI firmware finds no boot manager")
    assert "create partition efi size=100, format quick fs=fat32" in fix_after(result, message)
    report = json.loads(vhdfs("inspect", image, "--json").out)
    [system] = report["operating_systems"]
    assert system["boot"]["how"] == "a GPT disk (but no EFI system partition)"
    assert system["boot_manager"]["problems"] == [message[len("Windows: "):]]


def test_an_ntfs_esp_fails_as_firmware_reads_only_fat(vhdfs, tmp_path):
    image = tmp_path / "ntfs-esp.raw"
    gpt_disk(image, esp_fs="ntfs")
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "not FAT" in f]
    assert message == ('Windows: the EFI system partition volume 1 (NTFS "SYSTEM") is not FAT: '
                       "UEFI firmware reads only FAT (Windows uses FAT32) and cannot open it")
    assert "format quick fs=fat32" in fix_after(result, message)


def test_a_uefi_bcd_that_starts_the_bios_loader_fails(vhdfs, tmp_path):
    device = device_gpt_partition(DEFAULT_GPT_DISK_GUID, WINDOWS_GUID)
    bcd = build_bcd([Loader("Windows Server", device, device)],  # path winload.exe
                    bootmgr_device=device_gpt_partition(DEFAULT_GPT_DISK_GUID, ESP_GUID))
    image = tmp_path / "bios-loader.raw"
    gpt_disk(image, bcd=bcd)
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = findings(result, "fail", "boot-loader")
    assert message == ('the BCD default entry "Windows Server" starts \\Windows\\system32\\'
                       "winload.exe, a BIOS program, but this disk boots through UEFI, whose boot "
                       "manager starts winload.efi")
    assert "bcdboot C:\\Windows /f UEFI" in fix_after(result, message)


def test_a_child_that_removes_bootx64_fails_through_the_chain(vhdfs, gpt_raw, tmp_path):
    """The user's flow: a differencing disk over the image, a FAT change made with vhdfs rm
    (mtools), verify through both layers; the parent still passes."""
    raw, _ = gpt_raw
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    assert vhdfs("-q", "convert", raw, base, "--to", "dynamic").code == 0
    assert vhdfs("-q", "create", child, "--parent", base).code == 0
    removed = vhdfs("rm", child, "/EFI/Boot/bootx64.efi", "--volume", "1")
    assert removed.code == 0, removed.err
    result = vhdfs("verify", child)
    assert result.code == 1
    assert any(f.startswith(f"Windows: {ESP} has no \\EFI\\Boot\\bootx64.efi")
               for f in findings(result, "fail", "boot")), result.out
    assert vhdfs("verify", base).code == 0


def test_an_mbr_disk_without_its_bcd_fails(vhdfs, chain_copy):
    add_child(chain_copy / "child.vhd", chain_copy / "nobcd.vhd", {"Boot/BCD": None}, volume=1)
    result = vhdfs("verify", chain_copy / "nobcd.vhd")
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "has no" in f]
    assert message == ('Windows: the system partition volume 1 (NTFS "System Reserved") has no '
                       "\\Boot\\BCD (the boot configuration store)")
    assert fix_after(result, message) == (
        "in the VM (or from Windows recovery media): bcdboot C:\\Windows /s S: /f BIOS, S: being "
        "the active system partition (writes bootmgr and Boot\\BCD)")
    assert vhdfs("verify", chain_copy / "child.vhd").code == 0


def test_the_fixture_esp_is_a_clean_fat32_and_its_bcd_a_real_store(gpt_raw, tmp_path):
    raw, layout = gpt_raw
    esp = layout["partitions"][0]
    volume = tmp_path / "esp.vfat"
    with open(raw, "rb") as disk, open(volume, "wb") as out:
        disk.seek(esp["start"])
        out.write(disk.read(esp["size"]))
    checked = subprocess.run(["fsck.fat", "-n", str(volume)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    bcd = tmp_path / "BCD"
    subprocess.run(["mcopy", "-i", str(volume), "::/EFI/Microsoft/Boot/BCD", str(bcd)],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    store = read_bcd(bcd.read_bytes())  # python-registry reads the hive
    assert store.default_loader.path == "\\Windows\\system32\\winload.efi"
    assert store.default_loader.osdevice.partition_guid == WINDOWS_GUID


def test_two_esps_warn_and_the_one_with_the_bcd_is_read(vhdfs, gpt_raw, tmp_path):
    image = copy_of(gpt_raw, tmp_path, "two-esps.raw")
    sgdisk("--typecode=4:EF00", image)  # the recovery partition now claims to be an ESP too
    result = vhdfs("verify", image)
    assert result.code == 0, result.out
    assert findings(result, "warn", "boot") == [
        "Windows: the disk has 2 EFI system partitions (volumes 1, 4); vhdfs reads volume 1, "
        "which holds the BCD, but the firmware may start another one"]


def test_a_damaged_bcd_on_the_esp_fails_with_its_reason(vhdfs, tmp_path):
    image = tmp_path / "bad-bcd.raw"
    gpt_disk(image, esp_files={STORE: b"regf" + bytes(4092)})
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = [f for f in findings(result, "fail", "boot") if "BCD on" in f or "\\BCD" in f]
    assert message.startswith("Windows: \\EFI\\Microsoft\\Boot\\BCD on volume 1: not a readable "
                              "registry hive"), message
    assert fix_after(result, message) == UEFI_FIX
