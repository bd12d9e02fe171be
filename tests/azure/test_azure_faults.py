"""Faults: 503s and timeouts are retried, 403s fail at once with a clean message, and an upload
cut off by the service going away continues with --resume."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.azure.azurite import ACCOUNT, KEY, Azurite, FaultProxy, connection_string
from tests.azure.helpers import MiB, flat_disk, make_chain, service, stats_of, vhdfs

FOOTER = 512


def through(env: dict, proxy: FaultProxy, **extra: str) -> dict:
    return dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint), **extra)


def test_503s_and_timeouts_are_retried(tmp_path: Path, env: dict, azurite: Azurite,
                                       container: str, proxy: FaultProxy) -> None:
    base, child = make_chain(tmp_path)
    proxy.add("status", 2, method="PUT", contains="comp=page", status=503)
    proxy.add("hang", 1, method="PUT", contains="comp=page", seconds=3)
    proxy.add("status", 1, method="PUT", contains="comp=metadata", status=500)
    slow = through(env, proxy, VHDFS_BLOB_TIMEOUT="1")
    up = vhdfs("upload", child, f"az://{container}/disk.vhd", "--stats", env=slow)
    assert stats_of(up.stderr)["requests"] > 0 and "retried" in up.stderr
    answered = [s.answered for s in proxy.requests()]
    assert answered.count(503) == 2 and answered.count(500) == 1 and 0 in answered  # the hang
    blob = service(azurite.endpoint).get_blob_client(container, "disk.vhd").download_blob()
    assert blob.readall()[:-FOOTER] == flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]

    # Reading: the same faults on ranged GETs.
    proxy.clear()
    proxy.add("status", 2, method="GET", status=503)
    proxy.add("hang", 1, method="GET", seconds=3)
    out = tmp_path / "remote.raw"
    done = vhdfs("convert", f"az://{container}/disk.vhd", out, "--to", "raw", "--stats", env=slow)
    assert "retried" in done.stderr
    assert [s.answered for s in proxy.requests()].count(503) == 2
    assert out.read_bytes() == flat_disk(child, tmp_path / "flat2.vhd", env)[:-FOOTER]


def _sas(container: str, blob: str) -> str:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    return generate_blob_sas(ACCOUNT, container, blob, account_key=KEY,
                             permission=BlobSasPermissions(read=True, write=True, create=True),
                             expiry=datetime.now(UTC) + timedelta(hours=1))


def test_403_fails_at_once_without_secrets(tmp_path: Path, env: dict, container: str,
                                           proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    proxy.add("status", -1, status=403)
    sas = _sas(container, "disk.vhd")
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    url = f"{proxy.endpoint}/{container}/disk.vhd?{sas}"
    for args in (["info", url], ["upload", child, url], ["cat", url, "/x"]):
        proxy.seen.clear()
        done = vhdfs(*args, env=env, check=False)
        assert done.returncode == 8, done.stderr
        assert "access denied" in done.stderr and "HTTP 403 AuthorizationFailure" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
        assert signature not in done.stderr and signature not in done.stdout
        assert len(proxy.requests()) == 1  # no retry of a 403
    # The account key of the environment is never printed either (it is not even sent here:
    # the URL carries its own SAS).
    assert KEY not in done.stderr
    assert all("authorization" not in s.headers for s in proxy.requests())


def test_resume_after_the_service_went_away(tmp_path: Path, env: dict,
                                            own_azurite: Azurite) -> None:
    base, child = make_chain(tmp_path)
    service(own_azurite.endpoint).create_container("disks")
    proxy = FaultProxy(own_azurite.port)
    try:
        proxy.add("delay", -1, method="PUT", contains="comp=page", seconds=0.5)
        run_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint),
                       VHDFS_BLOB_RETRIES="2")
        first = subprocess.Popen([sys.executable, "-m", "vhdfs", "upload", child,
                                  "az://disks/disk.vhd", "--concurrency", "1"], env=run_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sum(s.answered == 201 and "comp=page" in s.path for s in proxy.requests()) < 2:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        own_azurite.stop()
        _, err = first.communicate(timeout=120)
    finally:
        proxy.close()
    assert first.returncode == 8, err
    assert "--resume" in err
    written = sum(s.body for s in proxy.requests() if s.answered == 201 and "comp=page" in s.path)
    assert 0 < written < 13 * MiB

    own_azurite.start()  # same port, same data
    direct = dict(env, AZURE_STORAGE_CONNECTION_STRING=own_azurite.connection_string)
    # Only the same source may be resumed.
    other = tmp_path / "other"
    other.mkdir()
    _, other_child = make_chain(other, seed=9)
    refused = vhdfs("upload", other_child, "az://disks/disk.vhd", "--resume", env=direct,
                    check=False)
    assert refused.returncode == 6 and "holds an upload of child.vhd" in refused.stderr
    done = vhdfs("upload", child, "az://disks/disk.vhd", "--resume", "--verify", env=direct)
    assert "already there" in done.stdout and "verified" in done.stdout
    client = service(own_azurite.endpoint).get_blob_client("disks", "disk.vhd")
    assert client.get_blob_properties().metadata["vhdfs_state"] == "complete"
    blob = client.download_blob().readall()
    assert blob[:-FOOTER] == flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]
    # A second --resume of a complete upload has nothing to send.
    again = vhdfs("upload", child, "az://disks/disk.vhd", "--resume", env=direct)
    assert "already complete" in again.stdout
