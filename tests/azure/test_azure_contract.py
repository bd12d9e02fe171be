"""Blob-backed layers keep the layer contract (vhdfs.image.ImageLayer) as local ones do: a
VHD chain read from page blobs in Azurite, opened in-process."""

from __future__ import annotations

from pathlib import Path

from tests.azure.helpers import make_chain, vhdfs
from tests.fixtures.contract import contract_problems
from vhdfs.azure.blob import BlobSource
from vhdfs.image import DiskType, ImageLayer
from vhdfs.info import layer_facts
from vhdfs.resolve import open_chain


def test_blob_layers_keep_the_contract(env: dict, container: str, tmp_path: Path) -> None:
    base, child = make_chain(tmp_path)
    vhdfs("upload", base, f"az://{container}/base.vhd", "--as-is", env=env)
    vhdfs("upload", child, f"az://{container}/child.vhd", "--as-is", env=env)
    with open_chain(str(child)) as local, open_chain(f"az://{container}/child.vhd") as remote:
        assert [layer.image_format for layer in remote.layers] == ["VHD", "VHD"]
        assert [layer.disk_type for layer in remote.layers] == [DiskType.DIFFERENCING,
                                                                DiskType.DYNAMIC]
        for layer, twin in zip(remote.layers, local.layers, strict=True):
            assert isinstance(layer.source, BlobSource) and layer.source.remote
            assert isinstance(layer, ImageLayer)
            assert contract_problems(layer) == []
            assert (layer.unique_id, layer.parent_ids, layer.size) == (
                twin.unique_id, twin.parent_ids, twin.size)
            size, _, tag = layer.source.version_stamp()  # what an upload fingerprints
            assert size == twin.source.size() and tag.startswith(f"{size}:")
        facts = layer_facts(remote)
        assert facts[0]["parent_found"]["path"] == f"az://{container}/base.vhd"
        assert remote.read(0, remote.size) == local.read(0, local.size)
