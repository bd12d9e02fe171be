"""Upload straight into a managed disk (issue 14, section 2), against Azurite through a proxy
that answers 403 to everything a managed disk's endpoint refuses: creating or deleting a
blob or container, leases, metadata, copies, and writes carrying a Content-MD5."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.azure.azurite import ACCOUNT, KEY, Azurite, FaultProxy
from tests.azure.helpers import MiB, flat_disk, make_chain, service, vhdfs
from vhdfs.errors import UsageError
from vhdfs.upload.upload import UploadOptions, upload

FOOTER = 512
SIZE = 64 * MiB  # make_chain's disks


def guard(proxy: FaultProxy) -> None:
    """What a managed disk's upload endpoint does not take, answered 403."""
    for header in ("x-ms-blob-type", "x-ms-copy-source", "content-md5"):
        proxy.add("status", -1, method="PUT", header=header, status=403)
    for part in ("restype=container", "comp=lease", "comp=metadata"):
        proxy.add("status", -1, contains=part, status=403)
    proxy.add("status", -1, method="DELETE", status=403)


def disk_url(proxy: FaultProxy, container: str, name: str) -> str:
    """The disk's URL with a SAS, as az disk grant-access hands it out."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    sas = generate_blob_sas(ACCOUNT, container, name, account_key=KEY,
                            permission=BlobSasPermissions(read=True, write=True),
                            expiry=datetime.now(UTC) + timedelta(hours=1))
    return f"{proxy.endpoint}/{container}/{name}?{sas}"


def make_disk(azurite: Azurite, container: str, name: str, size: int) -> None:
    """What `az disk create --upload-type Upload --upload-size-bytes N` leaves: an empty page
    blob of N bytes."""
    service(azurite.endpoint).get_blob_client(container, name).create_page_blob(size)


@pytest.fixture
def disk_env(env: dict, tmp_path: Path) -> dict:
    """No account in the environment (the SAS in the URL is the credential), and a cache
    folder of this test for the resume record."""
    out = {k: v for k, v in env.items() if not k.startswith("AZURE_STORAGE")}
    return dict(out, XDG_CACHE_HOME=str(tmp_path / "cache"))


def blob(azurite: Azurite, container: str, name: str) -> bytes:
    return service(azurite.endpoint).get_blob_client(container, name).download_blob().readall()


def test_upload_into_a_managed_disk(tmp_path: Path, env: dict, disk_env: dict, azurite: Azurite,
                                    container: str, proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    make_disk(azurite, container, "abcd", SIZE + FOOTER)
    guard(proxy)
    url = disk_url(proxy, container, "abcd")
    done = vhdfs("upload", child, url, "--managed-disk", "--verify", env=disk_env)
    assert "verified" in done.stdout
    assert "az disk revoke-access --resource-group RG --name DISK" in done.stderr
    seen = proxy.requests()
    assert all(s.answered != 403 for s in seen)  # nothing it refuses was ever asked
    writes = [s for s in seen if "comp=page" in s.path and s.method == "PUT"]
    assert writes and all("content-md5" not in s.headers for s in writes)
    assert writes[-1].headers["x-ms-range"] == f"bytes={SIZE}-{SIZE + FOOTER - 1}"  # footer last
    assert blob(azurite, container, "abcd")[:-FOOTER] == \
        flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]
    # The resume record: named by the URL without its query; nothing secret in it.
    records = list((tmp_path / "cache" / "vhdfs" / "uploads").iterdir())
    assert len(records) == 1
    signature = url.split("sig=")[1].split("&")[0]
    text = records[0].read_text()
    assert signature not in text and signature not in records[0].name and "sig" not in text
    assert json.loads(text)["state"] == "complete"
    assert json.loads(text)["url"] == url.split("?")[0]
    # Again: the disk holds pages now, so a new upload is refused; --resume says complete.
    again = vhdfs("upload", child, url, "--managed-disk", env=disk_env, check=False)
    assert again.returncode == 6 and "--resume" in again.stderr and "--overwrite" in again.stderr
    done = vhdfs("upload", child, url, "--managed-disk", "--resume", env=disk_env)
    assert "already complete" in done.stdout


def test_size_mismatch_fails_before_any_write(tmp_path: Path, disk_env: dict, azurite: Azurite,
                                              container: str, proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    make_disk(azurite, container, "abcd", 128 * MiB + FOOTER)
    guard(proxy)
    done = vhdfs("upload", child, disk_url(proxy, container, "abcd"), "--managed-disk",
                 env=disk_env, check=False)
    assert done.returncode == 2, done.stderr
    assert f"az disk create --resource-group RG --name DISK --upload-type Upload " \
           f"--upload-size-bytes {SIZE + FOOTER}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert all(s.method in ("GET", "HEAD") for s in proxy.requests())  # nothing written


def test_resume_after_an_interruption(tmp_path: Path, env: dict, disk_env: dict,
                                      azurite: Azurite, container: str,
                                      proxy: FaultProxy) -> None:
    _, child = make_chain(tmp_path)
    make_disk(azurite, container, "abcd", SIZE + FOOTER)
    guard(proxy)
    proxy.add("delay", -1, method="PUT", contains="comp=page", seconds=0.3)
    url = disk_url(proxy, container, "abcd")
    first = subprocess.Popen([sys.executable, "-m", "vhdfs", "upload", child, url,
                              "--managed-disk", "--concurrency", "1"], env=disk_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while sum(s.answered == 201 and "comp=page" in s.path for s in proxy.requests()) < 2:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # Cut off: some data is in, the footer (written last) is not.
    assert blob(azurite, container, "abcd")[-FOOTER:] == bytes(FOOTER)
    refused = vhdfs("upload", child, url, "--managed-disk", env=disk_env, check=False)
    assert refused.returncode == 6 and "already holds" in refused.stderr
    proxy.rules[-1].count = 0  # no more delays
    done = vhdfs("upload", child, url, "--managed-disk", "--resume", "--verify", env=disk_env)
    assert "already there" in done.stdout and "verified" in done.stdout
    assert all(s.answered != 403 for s in proxy.requests())
    assert blob(azurite, container, "abcd")[:-FOOTER] == \
        flat_disk(child, tmp_path / "flat.vhd", env)[:-FOOTER]
    # Without the record (another machine), --resume cannot tell what the pages are.
    other = dict(disk_env, XDG_CACHE_HOME=str(tmp_path / "other-cache"))
    done = vhdfs("upload", child, url, "--managed-disk", "--resume", env=other, check=False)
    assert done.returncode == 6 and "no record of an upload to this disk" in done.stderr
    # --overwrite clears the disk's pages and uploads again.
    (tmp_path / "o").mkdir()
    _, other_child = make_chain(tmp_path / "o", seed=4)
    vhdfs("upload", other_child, url, "--managed-disk", "--overwrite", env=disk_env)
    assert blob(azurite, container, "abcd")[:-FOOTER] == \
        flat_disk(other_child, tmp_path / "flat2.vhd", env)[:-FOOTER]


def test_managed_disk_url_is_detected_and_takes_a_flat_disk_only(tmp_path: Path) -> None:
    """An md-... host is a managed disk without --managed-disk: --as-is and --patch-base are
    refused before anything is opened or sent."""
    url = "https://md-impexp-t0vk4qjq2dqv.z22.blob.storage.azure.net/mbdvvjvmp0rz/abcd?sig=x"
    with pytest.raises(UsageError, match="managed disk's upload URL.*without --as-is"):
        upload(str(tmp_path / "disk.vhd"), url, UploadOptions(as_is=True))
    with pytest.raises(UsageError, match="without --patch-base"):
        upload(str(tmp_path / "disk.vhd"), url, UploadOptions(patch_base="az://c/base.vhd"))


def test_guard_refuses_what_a_plain_upload_sends(tmp_path: Path, disk_env: dict,
                                                 azurite: Azurite, container: str,
                                                 proxy: FaultProxy) -> None:
    """The proxy's rules bite: the same upload as a storage-account blob is refused."""
    _, child = make_chain(tmp_path)
    guard(proxy)
    done = vhdfs("upload", child, disk_url(proxy, container, "plain.vhd"), env=disk_env,
                 check=False)
    assert done.returncode == 8 and "HTTP 403" in done.stderr


@pytest.mark.parametrize("scheme, generation", [("gpt", "V2"), ("dos", "V1"), (None, None)])
def test_the_disk_create_named_fits_the_partition_table(tmp_path: Path, env: dict,
                                                        disk_env: dict, azurite: Azurite,
                                                        container: str, proxy: FaultProxy,
                                                        scheme: str | None,
                                                        generation: str | None) -> None:
    """A GPT disk boots only on a generation 2 VM, and a managed disk's generation is set when
    it is created: the `az disk create` named on a size mismatch carries it, and a GPT disk's
    upload ends by saying so."""
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as out:
        out.truncate(SIZE)
    if scheme:
        subprocess.run(["sfdisk", "-q", str(raw)], input=f"label: {scheme}\n,32M\n", text=True,
                       check=True, capture_output=True)
    image = tmp_path / "disk.vhd"
    vhdfs("convert", raw, image, "--to", "dynamic", env=env)
    make_disk(azurite, container, "wrong", 2 * SIZE + FOOTER)
    make_disk(azurite, container, "right", SIZE + FOOTER)
    guard(proxy)
    refused = vhdfs("upload", image, disk_url(proxy, container, "wrong"), "--managed-disk",
                    env=disk_env, check=False)
    assert refused.returncode == 2, refused.stderr
    fits = f"--upload-size-bytes {SIZE + FOOTER}"
    assert (f"{fits} --hyper-v-generation {generation} (then" if generation else
            f"{fits} (then") in refused.stderr
    done = vhdfs("upload", image, disk_url(proxy, container, "right"), "--managed-disk",
                 env=disk_env)
    assert ("boots only on a generation 2 VM" in done.stderr) == (generation == "V2")
