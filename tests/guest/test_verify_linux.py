"""verify on Linux images: the default boot entry's kernel and initrd, the Hyper-V drivers in
the initrd (gzip and zstd), the console, provisioning, fstab, swap, and deprovisioning."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.linux import DEFAULT_ROOT_UUID, build_linux_disk
from tests.fixtures.linux_boot import ALL_HYPERV, LinuxState
from tests.guest.conftest import DISK_SIZE

PASSED = "Successfully passed the verification tests."
FAILED = "Failed the verification tests."
KERNEL = "6.1.0-18-amd64"
NO_STORVSC = ("hv_vmbus", "hv_netvsc")

VARIANTS: dict[str, LinuxState] = {
    "good": LinuxState(),
    "zstd": LinuxState(initrd_compression="zstd"),
    "zstd-no-storvsc": LinuxState(initrd_compression="zstd", initrd_modules=NO_STORVSC),
    "gzip-no-storvsc": LinuxState(initrd_modules=NO_STORVSC),
    "missing-kernel": LinuxState(kernel_present=False),
    "missing-initrd": LinuxState(initrd_present=False),
    "no-hyperv-driver": LinuxState(initrd_modules=NO_STORVSC, tree_modules=NO_STORVSC),
    "built-in": LinuxState(initrd_modules=(), tree_modules=(), builtin=ALL_HYPERV),
    "sda1-fstab": LinuxState(root_spec="/dev/sda2", extra={"etc/fstab": (
        b"/dev/sda2 / ext4 errors=remount-ro 0 1\n/dev/sda1 /boot/efi vfat umask=0077 0 1\n"
        )}),
    "ssh-host-keys": LinuxState(ssh_host_keys=True, machine_id="5c1f0e7a9d2b4c6e8f0a1b2c3d4e5f60",
                                bash_history=True),
    "no-console": LinuxState(console=False),
    "cloud-init": LinuxState(cloud_init=True),
    "swap": LinuxState(extra={"swapfile": b"\0" * 4096}),
    "provisioning-disabled": LinuxState(extra={"etc/waagent.conf": b"Provisioning.Agent=disabled\n"
                                               b"ResourceDisk.Format=n\n"}),
    "cloud-init-not-azure": LinuxState(cloud_init=True, extra={
        "etc/cloud/cloud.cfg.d/91-azure_datasource.cfg": b"datasource_list: [ NoCloud, None ]\n"}),
}


@pytest.fixture(scope="session")
def linux_variant(tmp_path_factory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("linux-variants")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            path = folder / f"{name}.raw"
            state = VARIANTS[name]
            if name == "swap":  # a swap file on the root file system, in fstab
                build_linux_disk(path, DISK_SIZE, state=state, extra_files={
                    "etc/fstab": f"UUID={DEFAULT_ROOT_UUID} / ext4 defaults 0 1\n"
                    "/swapfile none swap sw 0 0\n".encode()})
            else:
                build_linux_disk(path, DISK_SIZE, state=state)
            built[name] = path
        return built[name]

    return get


def findings(result, status: str, check: str) -> list[str]:
    label = {"fail": "FAIL", "warn": "warn", "ok": "ok", "info": "info"}[status]
    prefix = f"{label:<4}  {check}: "
    return [line.strip()[len(prefix):] for line in result.out.splitlines()
            if line.strip()[:len(prefix)] == prefix]


def fix_after(result, message_part: str) -> str:
    lines = result.out.splitlines()
    index = next(i for i, line in enumerate(lines) if message_part in line)
    assert lines[index + 1].strip().startswith("fix: "), lines[index:index + 2]
    return lines[index + 1].strip()[len("fix: "):]


def json_finding(vhdfs, image, check: str, *args) -> list[dict]:
    report = json.loads(vhdfs("verify", image, "--json", *args).out)
    return [f for f in report["findings"] if f["check"] == check]


def test_a_good_image_passes_every_linux_check(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("good"))
    assert result.code == 0, result.out
    assert result.out.rstrip().endswith(PASSED)
    for check in ("boot-entry", "console", "hyperv-drivers", "provisioning", "resource-disk",
                  "swap", "fstab", "ssh-host-keys", "machine-id", "shell-history"):
        assert findings(result, "ok", check), (check, result.out)
    [drivers] = findings(result, "ok", "hyperv-drivers")
    assert drivers == (f"hv_vmbus, hv_storvsc, hv_netvsc installed for kernel {KERNEL} and "
                       f"inside its initrd /boot/initrd.img-{KERNEL} (cpio + gzip cpio)")
    assert "azure-linux-generalized" in findings(result, "info", "profile")[0]


def test_a_zstd_initrd_is_read(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("zstd"))
    assert result.code == 0, result.out
    assert "(cpio + zstd cpio)" in findings(result, "ok", "hyperv-drivers")[0]


@pytest.mark.parametrize("variant, compression", [("zstd-no-storvsc", "zstd"),
                                                  ("gzip-no-storvsc", "gzip")])
def test_an_initrd_without_hv_storvsc_fails(vhdfs, linux_variant, variant, compression):
    image = linux_variant(variant)
    result = vhdfs("verify", image)
    assert result.code == 1
    assert result.out.rstrip().endswith(FAILED)
    [message] = findings(result, "fail", "hyperv-drivers")
    assert message.startswith(f"the initrd /boot/initrd.img-{KERNEL} (cpio + {compression} cpio) "
                              "lacks hv_storvsc")
    assert f"update-initramfs -u -k {KERNEL}" in fix_after(result, message)
    [finding] = json_finding(vhdfs, image, "hyperv-drivers")
    assert finding["status"] == "fail" and finding["details"]["missing"] == ["hv_storvsc"]


def test_a_missing_kernel_fails(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("missing-kernel"))
    assert result.code == 1
    [message] = findings(result, "fail", "boot-entry")
    assert f"boots /boot/vmlinuz-{KERNEL}, which does not exist on volume 2" in message
    assert "update-grub" in fix_after(result, message)


def test_a_missing_initrd_fails(vhdfs, linux_variant):
    image = linux_variant("missing-initrd")
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = findings(result, "fail", "boot-entry")
    assert message.endswith(f"loads the initrd /boot/initrd.img-{KERNEL}, which does not exist")
    [finding] = json_finding(vhdfs, image, "boot-entry")
    assert finding["details"]["entry"]["kernel"] == f"/boot/vmlinuz-{KERNEL}"


def test_a_kernel_without_the_hyperv_driver_fails(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("no-hyperv-driver"))
    assert result.code == 1
    [message] = findings(result, "fail", "hyperv-drivers")
    assert message.startswith(f"hv_storvsc neither built into kernel {KERNEL} nor installed for it")


def test_built_in_drivers_need_no_initrd_modules(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("built-in"))
    assert result.code == 0, result.out
    assert findings(result, "ok", "hyperv-drivers")[0].startswith(
        f"hv_vmbus, hv_storvsc, hv_netvsc are built into kernel {KERNEL}")


def test_a_device_name_in_fstab_fails_and_the_fix_names_the_uuid(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("sda1-fstab"))
    assert result.code == 1
    [message] = findings(result, "fail", "fstab")
    assert "(line 1 mounts /dev/sda2 on /; line 2 mounts /dev/sda1 on /boot/efi)" in message
    assert fix_after(result, message) == (f"write UUID={DEFAULT_ROOT_UUID} instead of /dev/sda2; "
                                          "write UUID=1A2B-3C4D instead of /dev/sda1 in /etc/fstab")


def test_ssh_host_keys_fail_a_generalized_image_not_a_specialized_one(vhdfs, linux_variant):
    image = linux_variant("ssh-host-keys")
    result = vhdfs("verify", image)
    assert result.code == 1
    [keys] = findings(result, "fail", "ssh-host-keys")
    assert keys.startswith("SSH host keys are present (/etc/ssh/ssh_host_ecdsa_key,")
    assert "waagent -force -deprovision+user" in fix_after(result, keys)
    assert findings(result, "fail", "machine-id")[0].startswith("/etc/machine-id is set (5c1f0e7a")
    assert findings(result, "warn", "shell-history") == [
        "shell history left behind: /root/.bash_history"]
    specialized = vhdfs("verify", image, "--profile", "azure-linux-specialized")
    assert specialized.code == 0, specialized.out
    assert not findings(specialized, "fail", "ssh-host-keys")
    assert not findings(specialized, "ok", "ssh-host-keys")  # off in that profile
    # a specialized disk should not be provisioned again: waagent's auto is a warning there
    assert findings(specialized, "warn", "provisioning")[0].startswith("waagent would provision")


def test_no_serial_console_is_a_warning(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("no-console"))
    assert result.code == 0, result.out
    [message] = findings(result, "warn", "console")
    assert message.startswith("the kernel command line (root=UUID=") and "lacks console=ttyS0" in message


def test_cloud_init_provisions_and_waagent_must_leave_the_resource_disk(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("cloud-init"))
    assert result.code == 0, result.out
    assert findings(result, "ok", "provisioning") == [
        "provisioned by cloud-init with the Azure datasource "
        "(/etc/cloud/cloud.cfg.d/91-azure_datasource.cfg)"]
    [message] = findings(result, "warn", "resource-disk")
    assert message.startswith("cloud-init provisions, yet waagent is set to format the resource")
    assert "ResourceDisk.Format=n" in fix_after(result, message)


def test_provisioning_disabled_fails_a_generalized_image_and_suits_a_specialized_one(
        vhdfs, linux_variant):
    image = linux_variant("provisioning-disabled")
    result = vhdfs("verify", image)
    assert result.code == 1
    [message] = findings(result, "fail", "provisioning")
    assert message.startswith("Provisioning.Agent=disabled in /etc/waagent.conf and no cloud-init")
    assert "Provisioning.Agent=auto" in fix_after(result, message)
    specialized = vhdfs("verify", image, "--profile", "azure-linux-specialized")
    assert specialized.code == 0, specialized.out
    assert findings(specialized, "ok", "provisioning")[0].startswith("provisioning is off")


def test_cloud_init_without_the_azure_datasource_fails(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("cloud-init-not-azure"))
    assert result.code == 1
    [message] = findings(result, "fail", "provisioning")
    assert message == ("cloud-init provisions, but its datasource_list (NoCloud, None, in "
                       "/etc/cloud/cloud.cfg.d/91-azure_datasource.cfg) lacks Azure")


def test_swap_on_the_os_disk_is_a_warning(vhdfs, linux_variant):
    result = vhdfs("verify", linux_variant("swap"))
    assert result.code == 0, result.out
    assert findings(result, "warn", "swap") == [
        "swap on the OS disk: /etc/fstab line 2 swaps on /swapfile"]


def test_inspect_shows_the_distribution_kernels_and_boot_mode(vhdfs, linux_variant):
    result = vhdfs("inspect", linux_variant("good"))
    assert result.code == 0, result.out
    lines = [line.strip() for line in result.out.splitlines()]
    assert "distribution:  debian 12" in lines
    assert f"kernel:        {KERNEL} (default)" in lines
    assert any(line.startswith("boot:          UEFI: Hyper-V generation 2") for line in lines)
    assert "agent:         Azure Linux Agent (waagent, WALinuxAgent) 2.9.1.1" in lines
    report = json.loads(vhdfs("inspect", linux_variant("good"), "--json").out)
    [system] = report["operating_systems"]
    assert system["os"] == "linux" and system["distribution"] == "debian"
    assert system["architecture"] == "x86_64"
    assert system["kernels"] == [{"version": KERNEL, "path": f"/boot/vmlinuz-{KERNEL}",
                                  "version_from": "bzImage header", "modules": True}]
    assert system["boot"]["hyperv_generation"] == "2"
    assert system["boot_loader"]["default"]["initrds"] == [f"/boot/initrd.img-{KERNEL}"]


@pytest.mark.parametrize("variant, check, status, code", [
    ("good", "hyperv-drivers", "pass", 0),
    ("zstd", "hyperv-drivers", "pass", 0),
    ("zstd-no-storvsc", "hyperv-drivers", "fail", 1),
    ("gzip-no-storvsc", "hyperv-drivers", "fail", 1),
    ("missing-kernel", "boot-entry", "fail", 1),
    ("missing-initrd", "boot-entry", "fail", 1),
    ("no-hyperv-driver", "hyperv-drivers", "fail", 1),
    ("sda1-fstab", "fstab", "fail", 1),
    ("ssh-host-keys", "ssh-host-keys", "fail", 1),
    ("no-console", "console", "warn", 0),
])
def test_each_variant_in_json(vhdfs, linux_variant, variant, check, status, code):
    result = vhdfs("verify", linux_variant(variant), "--json")
    assert result.code == code
    report = json.loads(result.out)
    assert report["passed"] is (code == 0)
    assert report["profile"]["id"] == "azure-linux-generalized"
    assert status in [f["status"] for f in report["findings"] if f["check"] == check]
    problems = [f for f in report["findings"] if f["status"] in ("fail", "warn")]
    assert all(f.get("fix") for f in problems), problems


def test_a_swap_partition_on_the_os_disk_is_a_warning(vhdfs, linux_variant, tmp_path):
    image = tmp_path / "swap-partition.raw"
    shutil.copyfile(linux_variant("good"), image)
    sfdisk = shutil.which("sfdisk") or "/usr/sbin/sfdisk"
    subprocess.run([sfdisk, "--part-type", "--no-reread", "--no-tell-kernel", "-q", str(image),
                    "1", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"], check=True, capture_output=True)
    result = vhdfs("verify", image)
    assert result.code == 0, result.out
    [message] = findings(result, "warn", "swap")
    assert message == "swap on the OS disk: volume 1 is a swap partition"
    assert "ResourceDisk.EnableSwap=y" in fix_after(result, message)
