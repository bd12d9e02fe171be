"""Blob parents and blob destinations as users meet them (issue 14, section 3): --patch-base
serves as the parent of a chain whose local base is gone, `info` of a blob whose upload was
cut off says how to finish it, and an upload into a container that does not exist creates
it (or says why it cannot)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.azure.azurite import ACCOUNT, KEY, Azurite
from tests.azure.helpers import MiB, make_chain, service, vhdfs, write_layer
from vhdfs.create import create_differencing, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.upload.watch import ENV_PAUSE
from vhdfs.vhd.layer import Layer


def blob_bytes(azurite: Azurite, container: str, name: str) -> bytes:
    return service(azurite.endpoint).get_blob_client(container, name).download_blob().readall()


def test_patch_base_serves_as_the_parent(tmp_path: Path, env: dict, azurite: Azurite,
                                         container: str) -> None:
    """base <- child <- grandchild, the base uploaded and then gone from the disk: the blob
    named by --patch-base is the parent, no --parent needed, and nothing is warned about."""
    base, child = make_chain(tmp_path)
    grandchild = tmp_path / "grandchild.vhd"
    with Layer(LocalFile(child)) as layer:
        create_differencing(grandchild, parent_info_of(child, layer))
    write_layer(grandchild, [(5 * MiB, b"\x07" * 8192), (40 * MiB, bytes(512))])
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)
    vhdfs("upload", grandchild, f"az://{container}/flat.vhd", env=env)
    base.unlink()
    done = vhdfs("upload", grandchild, f"az://{container}/patched.vhd", "--patch-base",
                 f"az://{container}/base.vhd", "--verify", env=env)
    assert "warning" not in done.stderr
    assert blob_bytes(azurite, container, "patched.vhd") == \
        blob_bytes(azurite, container, "flat.vhd")


def test_info_of_an_interrupted_upload_says_how_to_finish_it(tmp_path: Path, env: dict,
                                                             container: str) -> None:
    _, child = make_chain(tmp_path)
    dest = f"az://{container}/disk.vhd"
    flag = tmp_path / "pause"
    first = subprocess.Popen([sys.executable, "-m", "vhdfs", "upload", child, dest],
                             env={**env, ENV_PAUSE: str(flag)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{flag}.reached").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    for command in (["info", dest], ["convert", dest, tmp_path / "out.raw", "--to", "raw"]):
        done = vhdfs(*command, env=env, check=False)
        assert done.returncode == 8, done.stderr
        assert "the upload into this blob is incomplete" in done.stderr
        assert "with --resume to finish it" in done.stderr and "--repair" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    vhdfs("upload", child, dest, "--resume", env=env)  # waits out the killed one's lease
    assert "chain: 1 layer(s)" in vhdfs("info", dest, env=env).stdout


def test_upload_creates_a_missing_container(tmp_path: Path, env: dict, azurite: Azurite) -> None:
    _, child = make_chain(tmp_path)
    done = vhdfs("upload", child, "az://fresh-container/disk.vhd", env=env)
    assert "created the container fresh-container" in done.stderr
    assert service(azurite.endpoint).get_blob_client("fresh-container", "disk.vhd").exists()


def test_a_credential_that_cannot_create_the_container_says_so(tmp_path: Path, env: dict,
                                                                azurite: Azurite) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    _, child = make_chain(tmp_path)
    sas = generate_blob_sas(ACCOUNT, "missing-container", "disk.vhd", account_key=KEY,
                            permission=BlobSasPermissions(read=True, write=True, create=True),
                            expiry=datetime.now(UTC) + timedelta(hours=1))
    url = f"{azurite.endpoint}/missing-container/disk.vhd?{sas}"
    no_account = {k: v for k, v in env.items() if not k.startswith("AZURE_STORAGE")}
    done = vhdfs("upload", child, url, env=no_account, check=False)
    assert done.returncode == 8, done.stderr
    assert "the container missing-container does not exist, and this credential may not " \
           "create it" in done.stderr
    assert "az storage container create --name missing-container" in done.stderr
    assert sas.split("sig=")[1].split("&")[0] not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not service(azurite.endpoint).get_container_client("missing-container").exists()
