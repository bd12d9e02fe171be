"""Which boot entry is the default: grub.cfg's set default (index, N>M path, id), grubenv's
saved_entry and next_entry, and Boot Loader Specification entries (blscfg)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.linux import DEFAULT_ROOT_UUID, build_linux_disk
from tests.fixtures.linux_boot import initrd_image, kernel_image, module_tree
from tests.guest.conftest import DISK_SIZE

NEW, OLD = "6.1.0-18-amd64", "6.1.0-17-amd64"
ROOT = DEFAULT_ROOT_UUID


def entry(kernel: str, indent: str = "\t", console: bool = True) -> str:
    cmdline = f"root=UUID={ROOT} ro" + (" console=ttyS0,115200n8" if console else " quiet")
    return (f"{indent}menuentry 'Debian GNU/Linux, with Linux {kernel}' --class debian "
            f"$menuentry_id_option 'gnulinux-{kernel}-advanced-{ROOT}' {{\n"
            f"{indent}\tsearch --no-floppy --fs-uuid --set=root {ROOT}\n"
            f"{indent}\tlinux\t/boot/vmlinuz-{kernel} {cmdline}\n"
            f"{indent}\tinitrd\t/boot/initrd.img-{kernel}\n{indent}}}\n")


# Debian/Ubuntu with GRUB_DEFAULT=saved: the newest kernel first, the others in a submenu
UBUNTU_CFG = (
    "if [ -s $prefix/grubenv ]; then\n  load_env\nfi\n"
    "if [ \"${next_entry}\" ] ; then\n   set default=\"${next_entry}\"\n   set next_entry=\n"
    "else\n   set default=\"${saved_entry}\"\nfi\n"
    f"menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-{ROOT}' {{\n"
    f"\tsearch --no-floppy --fs-uuid --set=root {ROOT}\n"
    f"\tlinux\t/boot/vmlinuz-{NEW} root=UUID={ROOT} ro console=ttyS0\n"
    f"\tinitrd\t/boot/initrd.img-{NEW}\n}}\n"
    f"submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option "
    f"'gnulinux-advanced-{ROOT}' {{\n" + entry(NEW) + entry(OLD, console=False) + "}\n")


def grubenv(**values: str) -> bytes:
    text = "# GRUB Environment Block\n" + "".join(f"{k}={v}\n" for k, v in values.items())
    return text.ljust(1024, "#").encode()


def disk_with(tmp_path, name: str, files: dict[str, bytes | None]):
    """A Linux disk with both kernels installed (the old one without its initrd)."""
    base = {f"boot/vmlinuz-{OLD}": kernel_image(OLD), **module_tree(OLD)}
    path = tmp_path / f"{name}.raw"
    build_linux_disk(path, DISK_SIZE, extra_files={**base, **files})
    return path


def default_of(vhdfs, image) -> dict:
    report = json.loads(vhdfs("inspect", image, "--json").out)
    return report["operating_systems"][0]["boot_loader"]


@pytest.mark.parametrize("env, kernel, how", [
    ({}, NEW, "the first entry (saved_entry is not set in grubenv)"),
    ({"saved_entry": f"gnulinux-advanced-{ROOT}>gnulinux-{OLD}-advanced-{ROOT}"}, OLD,
     f"saved_entry='gnulinux-advanced-{ROOT}>gnulinux-{OLD}-advanced-{ROOT}' in grubenv"),
    ({"saved_entry": "1>1"}, OLD, "saved_entry='1>1' in grubenv"),
    ({"saved_entry": "1>1", "next_entry": "0"}, NEW,
     "next_entry='0' in grubenv (boots once, then the default again)"),
])
def test_saved_and_next_entries_choose_the_default(vhdfs, tmp_path, env, kernel, how):
    files = {"boot/grub/grub.cfg": UBUNTU_CFG.encode()}
    if env:
        files["boot/grub/grubenv"] = grubenv(**env)
    loader = default_of(vhdfs, disk_with(tmp_path, "saved", files))
    assert loader["default"]["kernel"] == f"/boot/vmlinuz-{kernel}"
    assert loader["default_how"] == how
    assert len(loader["entries"]) == 3


def test_verify_checks_the_entry_grubenv_chose(vhdfs, tmp_path):
    image = disk_with(tmp_path, "old", {
        "boot/grub/grub.cfg": UBUNTU_CFG.encode(),
        "boot/grub/grubenv": grubenv(saved_entry=f"gnulinux-{OLD}-advanced-{ROOT}")})
    result = vhdfs("verify", image)
    assert result.code == 1
    assert f"loads the initrd /boot/initrd.img-{OLD}, which does not exist" in result.out
    assert "warn  console: the kernel command line (root=UUID=" in result.out


def test_a_default_naming_no_entry_falls_back_to_the_first(vhdfs, tmp_path):
    files = {"boot/grub/grub.cfg": UBUNTU_CFG.encode(),
             "boot/grub/grubenv": grubenv(saved_entry="no-such-entry")}
    loader = default_of(vhdfs, disk_with(tmp_path, "bad", files))
    assert loader["default"]["kernel"] == f"/boot/vmlinuz-{NEW}"
    assert loader["problems"][0].startswith("the default entry (saved_entry='no-such-entry' in "
                                            "grubenv) names no entry of /boot/grub/grub.cfg")


def test_boot_loader_specification_entries(vhdfs, tmp_path):
    """Red Hat style: grub.cfg runs blscfg; the entries are files, newest first; saved_entry
    names one by file name; `options $kernelopts` comes from grubenv."""
    machine = "0f0e0d0c0b0a09080706050403020100"
    cfg = (f"set default=\"${{saved_entry}}\"\nload_env\n"
           f"search --no-floppy --fs-uuid --set=root {ROOT}\nblscfg\n")
    files = {
        "boot/grub/grub.cfg": cfg.encode(),
        "boot/grub/grubenv": grubenv(kernelopts=f"root=UUID={ROOT} ro console=ttyS0"),
        f"boot/initrd.img-{OLD}": initrd_image(OLD, compression="zstd"),
    }
    for kernel in (NEW, OLD):
        files[f"boot/loader/entries/{machine}-{kernel}.conf"] = (
            f"title Debian ({kernel})\nversion {kernel}\nlinux /vmlinuz-{kernel}\n"
            f"initrd /initrd.img-{kernel}\noptions $kernelopts\n").encode()
    image = disk_with(tmp_path, "bls", files)
    loader = default_of(vhdfs, image)
    assert [e["title"] for e in loader["entries"]] == [f"Debian ({NEW})", f"Debian ({OLD})"]
    assert loader["default"]["cmdline"] == f"root=UUID={ROOT} ro console=ttyS0"
    result = vhdfs("verify", image)
    assert result.code == 0, result.out  # BLS paths are relative to /boot, found on the root
    assert "ok    console:" in result.out
    files["boot/grub/grubenv"] = grubenv(kernelopts=f"root=UUID={ROOT} ro",
                                         saved_entry=f"{machine}-{OLD}")
    older = disk_with(tmp_path, "bls-old", files)
    assert default_of(vhdfs, older)["default"]["title"] == f"Debian ({OLD})"
    result = vhdfs("verify", older)
    assert f"inside its initrd /boot/initrd.img-{OLD} (cpio + zstd cpio)" in result.out
