"""vhdfs inspect, and the hive reading under it, on our own hives and on one Windows wrote."""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import pytest

from tests.fixtures.windows_state import GENERALIZED, WindowsState, build_system_hive
from tests.guest.conftest import windows_disk
from vhdfs.guest.hives import HiveError, current_control_set, parse_hive
from vhdfs.guest.volumes import open_volumes
from vhdfs.resolve import OpenOptions, open_chain

REAL_SYSTEM = Path(__file__).resolve().parents[1] / "fixtures" / "hives" / "regipy-SYSTEM_2.xz"


@pytest.fixture(scope="module")
def real_system_hive() -> bytes:
    return lzma.decompress(REAL_SYSTEM.read_bytes())


def test_inspect_a_windows_chain(vhdfs, windows_chain):
    image = windows_chain.folder / "grandchild.vhd"
    result = vhdfs("inspect", image)
    assert result.code == 0, result.err
    lines = [line.strip() for line in result.out.splitlines()]
    assert lines[1] == "Windows (OS 1 of 1)"
    for expected in ("product:       Windows Server 2022 Datacenter",
                     "edition:       ServerDatacenter, Server",
                     "version:       10.0 build 20348.2227 (21H2)",
                     "architecture:  x86_64",
                     "hostname:      win-vhdfs0001",
                     'root:          volume 2 (NTFS "Windows"); system volume 1',
                     "boot:          BIOS: Hyper-V generation 1 (an MBR disk boots through the BIOS)",
                     f"image state:   {GENERALIZED}",
                     "agent:         Azure Windows VM Agent (WindowsAzureGuestAgent) 1.1.0.14"):
        assert expected in lines, (expected, result.out)
    report = json.loads(vhdfs("inspect", image, "--json").out)
    [system] = report["operating_systems"]
    assert report["partition_table"] == "mbr"
    assert system["os"] == "windows" and system["root_volume"] == 2 and system["system_volume"] == 1
    assert system["control_set"] == "ControlSet002"  # Select\Current, not the first control set
    assert system["hostname"] == "win-vhdfs0001"  # ControlSet001 says "stale-name"
    assert system["boot"] == {"mode": "BIOS", "hyperv_generation": "1",
                              "azure_hyper_v_generation": "V1",
                              "how": "an MBR disk boots through the BIOS"}
    manager = system["boot_manager"]
    assert manager["firmware"] == "BIOS" and manager["system_volume"] == 1
    assert [(f["path"], f["present"]) for f in manager["files"]] == [
        ("\\bootmgr", True), ("\\Boot\\BCD", True)]
    assert manager["default_entry"]["osdevice"] == (
        "partition at offset 17825792 of the disk with signature 0x5EED1D15")
    assert system["agents"][0]["version"] == "1.1.0.14"


def test_inspect_finds_nothing_on_a_blank_disk(vhdfs, tmp_path):
    assert vhdfs("create", tmp_path / "blank.vhd", "--size", "32M").code == 0
    result = vhdfs("inspect", tmp_path / "blank.vhd")
    assert result.code == 1
    assert "no operating system found" in result.out
    report = json.loads(vhdfs("inspect", tmp_path / "blank.vhd", "--json").out)
    assert report["operating_systems"] == []


def test_select_current_names_the_control_set():
    hive = parse_hive(build_system_hive(WindowsState()), "SYSTEM", "fixture")
    assert current_control_set(hive) == "ControlSet002"
    assert hive.value("ControlSet002\\Control\\Terminal Server", "fDenyTSConnections") == 0
    assert hive.value("ControlSet001\\Control\\Terminal Server", "fDenyTSConnections") == 1
    assert not hive.dirty


def test_a_file_that_is_not_a_hive_is_one_clear_error():
    with pytest.raises(HiveError, match="not a registry hive"):
        parse_hive(b"MZ" + bytes(8190), "SYSTEM", "volume 2: /Windows/System32/config/SYSTEM")
    with pytest.raises(HiveError, match="not a readable registry hive"):
        parse_hive(b"regf" + bytes(100), "SYSTEM", "x")


def test_a_real_system_hive(real_system_hive):
    """A SYSTEM hive written by Windows 10 (regipy's test data): one control set, and a
    primary/secondary sequence mismatch (it was copied from a running system)."""
    hive = parse_hive(real_system_hive, "SYSTEM", "regipy SYSTEM_2")
    cs = current_control_set(hive)
    assert cs == "ControlSet001"
    assert hive.dirty
    assert hive.value(f"{cs}\\Control\\ComputerName\\ComputerName", "ComputerName") == "SENSEI"
    assert hive.value(f"{cs}\\Control\\Session Manager\\Environment",
                      "PROCESSOR_ARCHITECTURE") == "AMD64"


def test_verify_and_inspect_read_a_real_hive_inside_an_image(vhdfs, tmp_path, real_system_hive):
    image = tmp_path / "real-system.raw"
    windows_disk(image, system_hive=real_system_hive)
    inspected = json.loads(vhdfs("inspect", image, "--json").out)["operating_systems"][0]
    assert (inspected["hostname"], inspected["architecture"], inspected["control_set"]) == \
        ("sensei", "x86_64", "ControlSet001")
    result = vhdfs("verify", image)
    assert result.code == 1
    out = result.out
    assert "FAIL  clean-shutdown: volume 2 (NTFS \"Windows\"): /Windows/System32/config/SYSTEM: " \
        "its two sequence numbers differ" in out
    assert "warn  rdp: Remote Desktop is disabled (SYSTEM ControlSet001\\Control\\Terminal " \
        "Server\\fDenyTSConnections = 1)" in out
    assert "warn  time: RealTimeIsUniversal is not set: Windows reads Azure's UTC clock as " \
        "local time (Pacific Standard Time)" in out
    assert "ok    san-policy: SAN policy OnlineAll" in out


class CountingDisk:
    """The chain as a flat disk that counts the bytes read through it."""

    def __init__(self, chain) -> None:
        self.chain = chain
        self.name = chain.name
        self.size = chain.size
        self.bytes_read = 0

    def read(self, offset: int, length: int) -> bytes:
        self.bytes_read += length
        return self.chain.read(offset, length)


def test_opening_the_volumes_reads_only_what_their_signatures_need(windows_raw):
    """TSK's autodetection tries every file system type (its YAFFS2 probe alone read 26 MiB
    of the 47 MiB Windows volume); a volume whose boot sector says NTFS is opened as NTFS."""
    raw, _ = windows_raw
    with open_chain(str(raw), OpenOptions(), allow_raw=True) as chain:
        disk = CountingDisk(chain)
        volumes = open_volumes(disk)
        assert [(v.fs_type, v.label) for v in volumes.volumes] == [
            ("NTFS", "System Reserved"), ("NTFS", "Windows")]
        assert disk.bytes_read < 1024 * 1024


def test_a_volume_whose_signature_lies_is_still_detected(linux_raw, tmp_path):
    """An ext4 volume with "NTFS    " written into its unused boot block: opening it as NTFS
    fails, and TSK's autodetection then finds ext4."""
    raw, layout = linux_raw
    copy = tmp_path / "lying.raw"
    shutil.copyfile(raw, copy)
    root = layout["partitions"][1]
    with open(copy, "r+b") as f:
        f.seek(root["start"] + 3)
        f.write(b"NTFS    ")
    with open_chain(str(copy), OpenOptions(), allow_raw=True) as chain:
        volume = open_volumes(chain).get(2)
        assert volume.fs_type == "ext4" and volume.uuid == root["uuid"]
