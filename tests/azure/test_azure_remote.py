"""Remote chains: a child blob and its parent blob, linked by set-parent or found by locator,
read lazily by info, cat and mount; a parent on another host gets no credentials."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from tests.azure.azurite import Azurite, FaultProxy
from tests.azure.helpers import MiB, make_chain, service, stats_of, vhdfs, write_layer
from tests.fixtures.content import make_png
from tests.fixtures.windows import build_windows_disk
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

GiB = 1024 * MiB
WELCOME = r"C:\inetpub\wwwroot\Welcome.png"


def find_bytes(path: Path, needle: bytes) -> int:
    """Offset of `needle` in a sparse file (only its data ranges are read)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            data = os.pread(fd, end - start, start)
            at = data.find(needle)
            if at >= 0:
                return start + at
            pos = end
    finally:
        os.close(fd)
    raise AssertionError("needle not found")


@pytest.fixture(scope="module")
def windows_chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2 GiB Windows disk as a dynamic base VHD, and a child that changed Welcome.png."""
    folder = tmp_path_factory.mktemp("win")
    png = make_png(800, 600, seed=3)
    raw = folder / "win.raw"
    build_windows_disk(raw, 2 * GiB, welcome_png=png)
    at = find_bytes(raw, png)
    assert at % 512 == 0
    base, child = folder / "base.vhd", folder / "child.vhd"
    vhdfs("convert", raw, base, "--to", "dynamic")
    raw.unlink()
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    patch = random.Random(5).randbytes(1024)
    write_layer(child, [(at + 2048, patch)])
    expected = png[:2048] + patch + png[3072:]
    return {"base": base, "child": child, "png_at": at, "expected": expected}


def test_remote_chain_linked_by_set_parent_reads_lazily(windows_chain: dict, env: dict,
                                                        container: str, tmp_path: Path) -> None:
    base, child = windows_chain["base"], windows_chain["child"]
    # The base goes up flat under another name: the child's locators do not find it.
    vhdfs("upload", base, f"az://{container}/bases/win-v1.vhd", env=env)
    up = vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", env=env)
    assert "parent not linked yet" in up.stderr
    remote = f"az://{container}/child.vhd"
    missing = vhdfs("info", remote, env=env, check=False)
    assert missing.returncode == 4
    assert f"az://{container}/base.vhd (not found)" in missing.stderr
    assert "vhdfs set-parent" in missing.stderr

    # A blob of another disk is refused as the parent.
    other = tmp_path / "other.vhd"
    create_dynamic(other, 2 * GiB)
    vhdfs("upload", other, f"az://{container}/other.vhd", "--as-is", env=env)
    wrong = vhdfs("set-parent", remote, f"az://{container}/other.vhd", env=env, check=False)
    assert wrong.returncode == 4 and "expects parent id" in wrong.stderr
    linked = vhdfs("set-parent", remote, f"az://{container}/bases/win-v1.vhd", env=env)
    assert f"vhdfs_parent={container}/bases/win-v1.vhd" in linked.stdout

    info = vhdfs("info", remote, "--json", env=env)
    assert '"by": "blob link"' in info.stdout

    cat = vhdfs("cat", remote, WELCOME, "--stats", env=env, text=False)
    assert cat.stdout == windows_chain["expected"]
    stats = stats_of(cat.stderr.decode())
    # The lazy bound: a file of 12 KiB out of a 2 GiB chain costs well under 2% of it.
    assert stats["bytes_fetched"] < 0.02 * 2 * GiB, stats
    print(f"cat Welcome.png over a 2 GiB remote chain: {stats}")


def test_remote_chain_mounts(windows_chain: dict, env: dict, container: str,
                             tmp_path: Path) -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    base, child = windows_chain["base"], windows_chain["child"]
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)
    vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", env=env)
    local_raw = tmp_path / "local.raw"
    vhdfs("convert", child, local_raw, "--to", "raw", env=env)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    vhdfs("mount", f"az://{container}/child.vhd", mountpoint, env=env)
    try:
        at = windows_chain["png_at"]
        regions = [(0, 64 * MiB), (at - MiB, 2 * MiB), (2 * GiB - MiB, MiB)]
        with open(mountpoint / "disk.raw", "rb") as mounted, open(local_raw, "rb") as local:
            assert os.fstat(mounted.fileno()).st_size == 2 * GiB
            for offset, length in regions:
                mounted.seek(offset)
                local.seek(offset)
                assert hashlib.sha256(mounted.read(length)).digest() == \
                    hashlib.sha256(local.read(length)).digest(), offset
    finally:
        done = vhdfs("umount", mountpoint, env=env, check=False)
        if done.returncode:
            with contextlib.suppress(OSError):
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    assert not os.path.ismount(mountpoint)


def test_parent_found_by_locator_in_the_container(tmp_path: Path, env: dict, azurite: Azurite,
                                                  container: str) -> None:
    base, child = make_chain(tmp_path)
    # The child first: its parent is not there yet, so no link is recorded.
    vhdfs("upload", child, f"az://{container}/images/child.vhd", "--as-is", env=env)
    meta = service(azurite.endpoint).get_blob_client(
        container, "images/child.vhd").get_blob_properties().metadata
    assert "vhdfs_parent" not in meta
    vhdfs("upload", base, f"az://{container}/images/base.vhd", env=env)
    info = vhdfs("info", f"az://{container}/images/child.vhd", env=env)
    assert f"az://{container}/images/base.vhd (by W2ru)" in info.stdout


def test_parent_on_another_host_gets_no_credentials(tmp_path: Path, env: dict, azurite: Azurite,
                                                    container: str, proxy: FaultProxy) -> None:
    base, child = make_chain(tmp_path)
    public = f"pub{container[1:]}"
    service(azurite.endpoint).create_container(public, public_access="blob")
    vhdfs("upload", base, f"az://{public}/base.vhd", env=env)
    vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", env=env)
    # The link names the parent on another host (the proxy, in front of the same Azurite).
    client = service(azurite.endpoint).get_blob_client(container, "child.vhd")
    meta = client.get_blob_properties().metadata
    meta["vhdfs_parent"] = f"{proxy.endpoint}/{public}/base.vhd"
    client.set_blob_metadata(meta)
    proxy.seen.clear()
    info = vhdfs("info", f"az://{container}/child.vhd", env=env)
    assert f"{proxy.endpoint}/{public}/base.vhd (by blob link)" in info.stdout
    seen = proxy.requests()
    assert seen and all(f"/{public}/base.vhd" in s.path for s in seen)
    assert all("authorization" not in s.headers for s in seen)
    assert all("sig=" not in s.path for s in seen)


def test_what_is_not_a_disk_blob(tmp_path: Path, env: dict, azurite: Azurite,
                                 container: str) -> None:
    service(azurite.endpoint).get_blob_client(container, "notes.txt").upload_blob(b"hello")
    done = vhdfs("info", f"az://{container}/notes.txt", env=env, check=False)
    assert done.returncode == 8
    assert "is a block blob, not a page blob" in done.stderr
    done = vhdfs("info", f"az://{container}/nothing.vhd", env=env, check=False)
    assert done.returncode == 8 and "no such blob" in done.stderr
    done = vhdfs("info", "az://nosuchcontainer/x.vhd", env=env, check=False)
    assert done.returncode == 8
    assert "no such blob" in done.stderr or "container does not exist" in done.stderr
    # az:// without an account in the environment: say which variables to set.
    cleanenv = {k: v for k, v in env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    done = vhdfs("info", "az://c/x.vhd", env=cleanenv, check=False)
    assert done.returncode == 2 and "AZURE_STORAGE_CONNECTION_STRING" in done.stderr


def test_local_child_over_a_base_in_blob_storage(tmp_path: Path, env: dict, container: str) -> None:
    """The base already sits in blob storage; the child is local: --parent names the blob."""
    base, child = make_chain(tmp_path)
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)  # keeps base's unique id
    local = tmp_path / "local.raw"
    vhdfs("convert", child, local, "--to", "raw", env=env)
    base.unlink()  # only the blob is left
    info = vhdfs("info", child, "--parent", f"az://{container}/base.vhd", env=env)
    assert f"az://{container}/base.vhd (by --parent)" in info.stdout
    remote = tmp_path / "remote.raw"
    result = vhdfs("convert", child, remote, "--to", "raw", "--parent",
                   f"az://{container}/base.vhd", "--stats", env=env)
    assert remote.read_bytes() == local.read_bytes()
    fetched = stats_of(result.stderr)["bytes_fetched"]
    assert 0 < fetched < 16 * MiB  # the base's data (about 10 MiB), not its 64 MiB
    missing = vhdfs("info", child, "--parent", f"az://{container}/nothing.vhd", env=env,
                    check=False)
    assert missing.returncode == 4 and f"looked in: az://{container}/nothing.vhd (" in missing.stderr
