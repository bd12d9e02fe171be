"""Only pages that hold data go up (issue 14, section 1): a flat upload, --as-is and
--patch-base send the 512-byte pages with a non-zero byte and nothing else, counted on the
wire by the test proxy; a zero sector of a child over its base's data is still cleared."""

from __future__ import annotations

from pathlib import Path

from tests.azure.azurite import Azurite, FaultProxy, connection_string
from tests.azure.helpers import (
    KiB,
    MiB,
    flat_disk,
    hidden_style_chain,
    nonzero_pages,
    service,
    vhdfs,
    write_layer,
)
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

PAGE = 512


def page_writes(proxy: FaultProxy) -> list:
    return [s for s in proxy.requests() if s.method == "PUT" and "comp=page" in s.path
            and s.headers.get("x-ms-page-write") == "update"]


def blob_bytes(azurite: Azurite, container: str, name: str) -> bytes:
    return service(azurite.endpoint).get_blob_client(container, name).download_blob().readall()


def test_flat_upload_sends_exactly_the_nonzero_pages(tmp_path: Path, env: dict, azurite: Azurite,
                                                     container: str, proxy: FaultProxy) -> None:
    top = hidden_style_chain(tmp_path)
    flat = flat_disk(top, tmp_path / "flat.vhd", env)
    want = nonzero_pages(flat[:-PAGE]) * PAGE + PAGE  # and the footer
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    vhdfs("upload", top, f"az://{container}/disk.vhd", "--verify", env=up_env)
    writes = page_writes(proxy)
    assert sum(w.body for w in writes) == want
    assert all(w.body <= 4 * MiB for w in writes)
    assert blob_bytes(azurite, container, "disk.vhd")[:-PAGE] == flat[:-PAGE]


def test_as_is_sends_the_files_nonzero_pages(tmp_path: Path, env: dict, azurite: Azurite,
                                            container: str, proxy: FaultProxy) -> None:
    """A dynamic VHD as it is: blocks allocated and only partly written hold zero pages in
    the file too; they are not sent, and the blob is the file byte for byte."""
    top = hidden_style_chain(tmp_path)
    data = top.read_bytes()
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    vhdfs("upload", top, f"az://{container}/top.vhd", "--as-is", "--verify", env=up_env)
    assert sum(w.body for w in page_writes(proxy)) == nonzero_pages(data) * PAGE
    assert blob_bytes(azurite, container, "top.vhd") == data


def test_patch_sends_the_childs_pages_and_clears_zeros_over_base_data(
        tmp_path: Path, env: dict, azurite: Azurite, container: str, proxy: FaultProxy) -> None:
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    create_dynamic(base, 32 * MiB, 512 * KiB)
    write_layer(base, [(1 * MiB, b"\xbb" * 64 * KiB), (9 * MiB, b"\xbb" * 4096)])
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    # One zero sector over the base's data between two of data; zeros over a hole of the
    # base; a sector of data alone in its block.
    write_layer(child, [(1 * MiB + 4096, b"\xcc" * PAGE + bytes(PAGE) + b"\xcc" * PAGE),
                        (20 * MiB, bytes(8192)), (25 * MiB, b"\xdd" * PAGE)])
    vhdfs("upload", base, f"az://{container}/base.vhd", env=env)
    up_env = dict(env, AZURE_STORAGE_CONNECTION_STRING=connection_string(proxy.endpoint))
    vhdfs("upload", child, f"az://{container}/patched.vhd", "--patch-base",
          f"az://{container}/base.vhd", "--verify", env=up_env)
    assert sum(w.body for w in page_writes(proxy)) == 3 * PAGE + PAGE  # data pages, footer
    clears = [s.headers["x-ms-range"] for s in proxy.requests()
              if s.headers.get("x-ms-page-write") == "clear"]
    at = 1 * MiB + 4096 + PAGE
    assert clears == [f"bytes={at}-{at + PAGE - 1}"]  # not the zeros over the base's hole
    flat = flat_disk(child, tmp_path / "flat.vhd", env)
    assert blob_bytes(azurite, container, "patched.vhd")[:-PAGE] == flat[:-PAGE]
