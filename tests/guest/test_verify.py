"""vhdfs verify: chain, agent and version, boot volume, Azure size rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.fixtures.bcdstore import build_mbr_bcd
from tests.fixtures.content import find_distlib_launcher
from tests.fixtures.windows import DEFAULT_DISK_SIGNATURE
from tests.fixtures.windows_state import WindowsState, windows_volume_files
from tests.guest.conftest import DISK_SIZE, SYSTEM_SIZE, add_child, windows_disk

WINLOAD = "Windows/System32/winload.exe"
WINDOWS_AGENT = "Azure Windows VM Agent (WindowsAzureGuestAgent)"
PASSED = "Successfully passed the verification tests."
FAILED = "Failed the verification tests."


def failures(result) -> list[str]:
    return [line.split("FAIL", 1)[1].strip() for line in result.out.splitlines()
            if line.strip().startswith("FAIL")]


def test_good_windows_sample_passes(vhdfs, windows_chain):
    result = vhdfs("verify", windows_chain.folder / "grandchild.vhd")
    assert result.code == 0, result.out
    assert result.out.rstrip().endswith(PASSED)
    assert f"found {WINDOWS_AGENT} version 1.1.0.14 on volume 2" in result.out
    assert "volume 2 with the" in result.out and "is the boot volume" in result.out
    report = json.loads(vhdfs("verify", windows_chain.folder / "grandchild.vhd", "--json").out)
    assert report["passed"] is True
    agent = next(f for f in report["findings"] if f["check"] == "agent")
    assert agent["details"]["version"] == "1.1.0.14"
    assert agent["details"]["volume"] == 2
    checks = {f["check"] for f in report["findings"]}
    assert {"chain", "structure", "partitions", "agent", "boot", "upload", "size",
            "vm-sizes"} <= checks


def test_good_linux_sample_passes(vhdfs, linux_raw):
    raw, layout = linux_raw
    result = vhdfs("verify", raw)
    assert result.code == 0, result.out
    assert "found Azure Linux Agent (waagent, WALinuxAgent) version 2.9.1.1 on volume 2" in result.out
    assert f"boots root=UUID={layout['partitions'][1]['uuid']}" in result.out


def test_agent_missing_fails(vhdfs, tmp_path):
    windows_disk(tmp_path / "noagent.raw", agent=False)
    result = vhdfs("verify", tmp_path / "noagent.raw")
    assert result.code == 1
    assert result.out.rstrip().endswith(FAILED)
    assert any(f.startswith("agent: no Azure agent found") for f in failures(result))


def test_agent_on_a_non_boot_volume_fails(vhdfs, tmp_path):
    windows_disk(tmp_path / "sysagent.raw", agent_on_system_partition=True)
    result = vhdfs("verify", tmp_path / "sysagent.raw")
    assert result.code == 1
    assert f"found {WINDOWS_AGENT} version 1.1.0.14 on volume 1" in result.out
    assert any("but volume 2 is the boot volume" in f and f.endswith(
        "make sure volume 1 is the boot volume") for f in failures(result))


def test_with_two_windows_volumes_the_bcd_decides(vhdfs, tmp_path):
    """Both volumes hold winload.exe and the agent is on volume 1: only a BCD that boots
    volume 1 makes the disk pass."""
    launcher = find_distlib_launcher().read_bytes()
    extra = {1: {WINLOAD: launcher, **windows_volume_files(WindowsState())}}
    windows_disk(tmp_path / "bcd2.raw", agent_on_system_partition=True, extra_files=extra)
    result = vhdfs("verify", tmp_path / "bcd2.raw")
    assert result.code == 1
    assert any("boots volume 2" in f and "make sure volume 1 is the boot volume" in f
               for f in failures(result))
    bcd = build_mbr_bcd(DEFAULT_DISK_SIGNATURE, 1024 * 1024)  # partition 1 starts at 1 MiB
    windows_disk(tmp_path / "bcd1.raw", agent_on_system_partition=True, extra_files=extra, bcd=bcd)
    result = vhdfs("verify", tmp_path / "bcd1.raw")
    assert result.code == 0, result.out
    assert "boots volume 1" in result.out


def test_bcd_of_another_disk_fails(vhdfs, tmp_path):
    bcd = build_mbr_bcd(0x0BADD15C, 1024 * 1024 + SYSTEM_SIZE)  # partition 2, another disk
    windows_disk(tmp_path / "cloned.raw", bcd=bcd)
    result = vhdfs("verify", tmp_path / "cloned.raw")
    assert result.code == 1
    assert any("signature 0x0BADD15C, but this disk's signature is 0x5EED1D15" in f
               for f in failures(result))


def test_size_not_a_whole_mib_fails_with_a_command_that_fixes_it(vhdfs, tmp_path):
    odd = tmp_path / "odd.raw"
    windows_disk(odd, size=DISK_SIZE + 512)
    result = vhdfs("verify", odd)
    assert result.code == 1
    message = next(f for f in failures(result) if "not a whole number of MiB" in f)
    assert f"virtual size {DISK_SIZE + 512} bytes" in message
    command = message.split("with: ", 1)[1]
    # a raw image: a fixed-VHD copy, resized by vhdfs resize (no raw copy, no truncate)
    assert command == (f"vhdfs convert {odd} disk-fixed.vhd --to fixed && "
                       f"vhdfs resize disk-fixed.vhd {DISK_SIZE + 1024 * 1024}")
    # the command works: run it (vhdfs from this interpreter's venv) and verify its result
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    fixed = vhdfs("verify", tmp_path / "disk-fixed.vhd")
    assert fixed.code == 0, fixed.out
    assert "it is already a fixed VHD" in fixed.out


def test_broken_chain_fails_naming_the_missing_parent(vhdfs, chain_copy):
    (chain_copy / "base.vhd").rename(chain_copy / "elsewhere.vhd")
    result = vhdfs("verify", chain_copy / "child.vhd")
    assert result.code == 1
    assert result.out.rstrip().endswith(FAILED)
    chain_failure = failures(result)[0]
    assert chain_failure.startswith("chain: ")
    assert "base.vhd" in chain_failure and "looked" in chain_failure
    report = json.loads(vhdfs("verify", chain_copy / "child.vhd", "--json").out)
    assert report["passed"] is False
    assert report["findings"][0]["details"]["error"] == "ParentNotFound"


def test_profile_selection_and_profile_files(vhdfs, windows_raw, tmp_path):
    raw, _ = windows_raw
    only_linux = vhdfs("verify", raw, "--profile", "linux-agent")
    assert only_linux.code == 1
    assert any("no Azure agent found (profiles: linux-agent" in f for f in failures(only_linux))
    custom = tmp_path / "agents.toml"
    custom.write_text('[[agent]]\nid = "iis-site"\nname = "IIS start page"\nos = "windows"\n'
                      'files = ["inetpub/wwwroot/iisstart.htm"]\n'
                      'version = [{ text = "inetpub/wwwroot/iisstart.htm", '
                      'regex = "<title>IIS Windows Server</title>" }]\n')
    result = vhdfs("verify", raw, "--profile-file", custom, "--profile", "iis-site")
    assert result.code == 0, result.out
    assert "found IIS start page version <title>IIS Windows Server</title> on volume 2" in result.out
    custom.write_text("[[agent]]\nid = 1\n")
    bad = vhdfs("verify", raw, "--profile-file", custom)
    assert bad.code == 2
    assert bad.err.startswith(f"vhdfs: error: {custom}: [[agent]] number 1 lacks name, os, files")
    unknown = vhdfs("verify", raw, "--profile", "nope")
    assert unknown.code == 2 and "--profile nope: no such profile (verify profiles: " in unknown.err


def test_no_active_partition_fails(vhdfs, windows_raw, tmp_path):
    raw, _ = windows_raw
    copy = tmp_path / "inactive.raw"
    shutil.copyfile(raw, copy)
    with open(copy, "r+b") as f:
        f.seek(0x1BE)
        f.write(b"\x00")  # partition 1 is no longer active
    result = vhdfs("verify", copy)
    assert result.code == 1
    assert any("no partition is marked active" in f for f in failures(result)), result.out


def test_a_child_that_deletes_bootmgr_fails(vhdfs, chain_copy):
    add_child(chain_copy / "child.vhd", chain_copy / "nobootmgr.vhd", {"bootmgr": None}, volume=1)
    result = vhdfs("verify", chain_copy / "nobootmgr.vhd")
    assert result.code == 1
    assert any("has no \\bootmgr (the Windows Boot Manager)" in f for f in failures(result)), result.out
    assert vhdfs("verify", chain_copy / "child.vhd").code == 0
