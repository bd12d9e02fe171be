"""`upload` and `set-parent` on blobs with --json (the one-object convention of
tests/cli/test_json_results.py) and --progress json, against Azurite, with a SAS URL that must
not reach the output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.azure.azurite import ACCOUNT, KEY, Azurite
from tests.azure.helpers import make_chain, service, vhdfs
from tests.cli.test_json_results import KEYS

UPLOAD_KEYS = {"source", "dest", "mode", "blob_size", "sent", "cleared", "present", "writes",
               "digest", "seconds", "verified", "already_complete", "parent_link", "notes",
               "skipped", "skipped_free", "free_space", "warnings"}


def sas_url(azurite: Azurite, container: str, name: str) -> tuple[str, str]:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT, container, account_key=KEY, expiry=datetime.now(UTC) + timedelta(hours=1),
        permission=ContainerSasPermissions(read=True, write=True, create=True, add=True,
                                           delete=True, list=True))
    return f"{azurite.endpoint}/{container}/{name}?{sas}", sas


def test_upload_prints_one_object_and_json_progress(tmp_path: Path, env: dict,
                                                    azurite: Azurite, container: str) -> None:
    _, child = make_chain(tmp_path)
    url, sas = sas_url(azurite, container, "disk.vhd")
    done = vhdfs("upload", child, url, "--json", "--progress", "json", "--verify", env=env)
    result = json.loads(done.stdout)
    assert set(result) == UPLOAD_KEYS
    assert result["dest"] == f"{azurite.endpoint}/{container}/disk.vhd"  # no query: no SAS
    assert result["mode"] == "flat" and result["verified"] is True
    assert result["sent"] + result["skipped"] == result["blob_size"] == 64 * 1024 * 1024 + 512
    props = service(azurite.endpoint).get_blob_client(container, "disk.vhd").get_blob_properties()
    assert result["digest"] == props.metadata["vhdfs_digest"]
    assert result["digest"].startswith("sha256:")
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    percents = [line["percent"] for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert lines[-1]["done"] == lines[-1]["total"] == result["blob_size"]
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    for text in (done.stdout, done.stderr):
        assert signature not in text and "sig=" not in text


def test_set_parent_of_blobs_records_metadata(tmp_path: Path, env: dict, azurite: Azurite,
                                              container: str) -> None:
    base, child = make_chain(tmp_path)
    vhdfs("upload", base, f"az://{container}/base.vhd", "-q", env=env)
    vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", "-q", env=env)
    done = vhdfs("set-parent", f"az://{container}/child.vhd", f"az://{container}/base.vhd",
                 "--json", env=env)
    result = json.loads(done.stdout)
    assert set(result) == KEYS["set-parent"]
    recorded = service(azurite.endpoint).get_blob_client(
        container, "child.vhd").get_blob_properties().metadata["vhdfs_parent"]
    assert result["metadata"] == {"vhdfs_parent": recorded}
    assert result["locators"] == [] and result["forced"] is False
