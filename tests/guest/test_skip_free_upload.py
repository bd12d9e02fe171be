"""upload --skip-free against a real Azurite: the disk of tests/guest/test_skip_free.py (NTFS,
FAT32, FAT16, ext4 with deleted files, an unknown partition) goes up without its free space:
fewer bytes sent, the blob holds exactly what convert --skip-free writes, the deleted files'
markers are not in it (they are without the flag)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.azure.azurite import Azurite
from tests.azure.conftest import azurite, container, env  # noqa: F401 - fixtures used here
from tests.azure.helpers import service, vhdfs
from tests.fixtures.common import MiB
from tests.guest.test_skip_free import Disk, deleted_marker, disk  # noqa: F401 - the fixture

FOOTER = 512


def blob_bytes(server: Azurite, container_name: str, name: str) -> bytes:
    return service(server.endpoint).get_blob_client(container_name, name).download_blob().readall()


def test_free_space_is_not_sent(disk: Disk, tmp_path: Path, env: dict,  # noqa: F811
                                azurite: Azurite, container: str) -> None:  # noqa: F811
    plain = json.loads(vhdfs("upload", disk.image, f"az://{container}/plain.vhd", "--json",
                             env=env).stdout)
    done = vhdfs("upload", disk.image, f"az://{container}/skipped.vhd", "--skip-free", "--json",
                 "--verify", env=env)
    result = json.loads(done.stdout)
    assert result["verified"] is True
    assert plain["skipped_free"] == 0 and plain["free_space"] is None
    assert result["skipped_free"] >= 4 * 2 * MiB
    assert {v["file_system"] for v in result["free_space"]["volumes"]} >= {"NTFS", "FAT32", "ext4"}
    assert result["sent"] <= plain["sent"] - 4 * 2 * MiB  # the four deleted files at least
    up = blob_bytes(azurite, container, "skipped.vhd")
    whole = blob_bytes(azurite, container, "plain.vhd")
    for fs in ("NTFS", "FAT32", "FAT16", "ext4"):
        assert deleted_marker(fs) in whole and deleted_marker(fs) not in up, fs
    local = tmp_path / "skipped.raw"
    vhdfs("convert", disk.image, local, "--to", "raw", "--skip-free", env=env)
    assert up[:-FOOTER] == local.read_bytes()  # what convert --skip-free writes, exactly
    assert "left out" in vhdfs("upload", disk.image, f"az://{container}/again.vhd", "--skip-free",
                               env=env).stdout


def test_skip_free_goes_with_a_flattened_upload_only(disk: Disk, env: dict,  # noqa: F811
                                                     container: str) -> None:  # noqa: F811
    done = vhdfs("upload", disk.image, f"az://{container}/x.vhd", "--skip-free", "--as-is",
                 env=env, check=False)
    assert done.returncode == 2 and "--skip-free" in done.stderr and "--as-is" in done.stderr
