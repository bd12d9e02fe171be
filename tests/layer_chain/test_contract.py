"""The layer contract (vhdfs.image.ImageLayer): every format's layer keeps it, read-only and
writable, and what the contract says reads the same through every format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.contract import contract_problems, protocol_members
from vhdfs.chain import Chain
from vhdfs.create import (
    create_differencing,
    create_dynamic,
    create_fixed,
    create_vhdx,
    create_vhdx_differencing,
    parent_info_of,
)
from vhdfs.errors import RefusedError
from vhdfs.image import SECTOR, DiskType, ImageLayer
from vhdfs.info import layer_facts
from vhdfs.raw import RawLayer
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer
from vhdfs.vhdx.layer import VhdxLayer

MiB = 1 << 20
SIZE = 8 * MiB


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract")
    out = {name: folder / name for name in (
        "fixed.vhd", "dynamic.vhd", "child.vhd", "dynamic.vhdx", "child.avhdx", "disk.raw")}
    create_fixed(out["fixed.vhd"], SIZE)
    create_dynamic(out["dynamic.vhd"], SIZE)
    with Layer(LocalFile(out["dynamic.vhd"])) as parent:
        create_differencing(out["child.vhd"], parent_info_of(out["dynamic.vhd"], parent))
    create_vhdx(out["dynamic.vhdx"], SIZE)
    with VhdxLayer(LocalFile(out["dynamic.vhdx"])) as parent:
        create_vhdx_differencing(out["child.avhdx"], out["dynamic.vhdx"], parent)
    out["disk.raw"].write_bytes(bytes(SIZE - 100))  # an odd size: read zero-padded
    return out


KINDS = {  # image -> (format, disk type, differencing)
    "fixed.vhd": ("VHD", DiskType.FIXED, False),
    "dynamic.vhd": ("VHD", DiskType.DYNAMIC, False),
    "child.vhd": ("VHD", DiskType.DIFFERENCING, True),
    "dynamic.vhdx": ("VHDX", DiskType.DYNAMIC, False),
    "child.avhdx": ("VHDX", DiskType.DIFFERENCING, True),
    "disk.raw": ("raw", None, False),
}


def opened(path: Path, *, writable: bool = False) -> Chain:
    return open_chain(str(path), OpenOptions(), writable=writable, allow_raw=not writable)


# A raw image is opened read-only only (open_chain takes raw images for reading).
OPENINGS = [(name, False) for name in KINDS] + [(name, True) for name in KINDS if name != "disk.raw"]


@pytest.mark.parametrize(("name", "writable"), OPENINGS,
                         ids=[f"{n}-{'rw' if w else 'ro'}" for n, w in OPENINGS])
def test_every_layer_keeps_the_contract(images: dict[str, Path], name: str, writable: bool) -> None:
    with opened(images[name], writable=writable) as chain:
        for layer in chain.layers:
            assert isinstance(layer, ImageLayer)  # runtime_checkable: every member is there
            assert contract_problems(layer) == []


@pytest.mark.parametrize("name", list(KINDS))
def test_the_contract_reads_the_same_in_every_format(images: dict[str, Path], name: str) -> None:
    with opened(images[name]) as chain:
        _check_facts(images[name], name, chain.layers)


def _check_facts(path: Path, name: str, layers: list[ImageLayer]) -> None:
    image_format, disk_type, differencing = KINDS[name]
    top = layers[0]
    assert (top.image_format, top.disk_type, top.is_differencing) == (
        image_format, disk_type, differencing)
    assert top.size == SIZE
    assert top.sector_size == SECTOR and top.logical_sector_size == SECTOR
    assert top.bad_blocks == {} and top.warnings == []
    assert top.format_id(top.unique_id) == (top.describe()["unique_id"] if top.unique_id else "")
    if differencing:
        parent = layers[1]
        assert top.parent_id == parent.unique_id and parent.unique_id in top.parent_ids
        assert top.locator_entries and top.format_id(top.parent_id) == top.describe()["parent_id"]
    else:
        assert top.parent_id is None and top.parent_ids == () and top.locator_entries == []
    assert (top.creation_time is not None) == (image_format == "VHD")
    assert (top.virtual_disk_id is not None) == (image_format == "VHDX")
    assert (top.physical_sector_size is not None) == (image_format == "VHDX")
    assert top.commit_mark is None
    facts = top.describe()
    assert (facts["path"], facts["virtual_size"]) == (str(path), SIZE)
    assert facts["disk_type"] == ("raw" if disk_type is None else disk_type.name.lower())


def test_info_asks_each_layer_to_describe_itself(images: dict[str, Path]) -> None:
    """`vhdfs info` facts: the layer's own description, plus where its parent was found
    (right after the locators that led there)."""
    with open_chain(str(images["child.vhd"])) as chain:
        facts = layer_facts(chain)
        assert facts[1] == chain.layers[1].describe()
        keys = list(facts[0])
        assert keys[keys.index("locators") + 1] == "parent_found"
        assert facts[0]["parent_found"]["path"].endswith("dynamic.vhd")
        assert {k: v for k, v in facts[0].items() if k != "parent_found"} == chain.top.describe()


def test_a_raw_layer_refuses_writes(images: dict[str, Path]) -> None:
    layer = RawLayer(LocalFile(images["disk.raw"]))
    try:
        with pytest.raises(RefusedError, match="raw image is only read"):
            layer.write(0, bytes(SECTOR))
        # The zero padding past the odd end of the file maps as zeros, not as file bytes.
        assert layer.map(SIZE - SECTOR, SECTOR)[-1].kind.value == "zero"
    finally:
        layer.close()


class _Missing(RawLayer):
    """A layer that lost two members and changed a signature: the check must say so."""

    image_format = None  # type: ignore[assignment]

    def map(self, offset: int) -> list:  # type: ignore[override]
        return []


def test_the_check_finds_what_a_layer_lacks(images: dict[str, Path]) -> None:
    layer = _Missing(LocalFile(images["disk.raw"]))
    try:
        del layer.bad_blocks
        problems = contract_problems(layer)
        assert not isinstance(layer, ImageLayer)
        assert any("bad_blocks is missing" in p for p in problems)
        assert any(p.startswith("_Missing.image_format is None") for p in problems)
        assert any(p.startswith("_Missing.map takes") for p in problems)
    finally:
        layer.close()


def test_the_contract_names_what_callers_use() -> None:
    """The members the chain, the operations and the views use, and nothing format-only
    (a VHD footer or header, a VHDX region table)."""
    members = set(protocol_members())
    assert {"size", "block_size", "sector_size", "writable", "warnings", "name", "source",
            "unique_id", "parent_ids", "parent_name", "is_differencing", "image_format",
            "locator_entries", "bad_blocks", "map", "read_into", "write", "describe",
            "format_id", "flush", "close"} <= members
    assert not members & {"footer", "header", "bat", "regions", "current_header"}


def test_a_chain_is_typed_on_the_contract(images: dict[str, Path]) -> None:
    with open_chain(str(images["child.avhdx"])) as chain:
        again = Chain(list(chain.layers), chain.links)
        assert again.name == str(images["child.avhdx"]) and not again.writable


def test_no_attribute_probe_goes_without_a_reason() -> None:
    """Our own objects are used through their declared interfaces: a getattr/hasattr in
    vhdfs/ is left only for a third-party object (or module) that may really lack the
    attribute, and says so in a comment on its line or the two lines above."""
    import ast

    root = Path(__file__).resolve().parents[2] / "vhdfs"
    bare = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("getattr", "hasattr"):
                around = lines[max(0, node.lineno - 3):node.lineno]
                if not any("#" in line for line in around):
                    bare.append(f"{path.relative_to(root.parent)}:{node.lineno}: "
                                f"{lines[node.lineno - 1].strip()}")
    assert bare == []
