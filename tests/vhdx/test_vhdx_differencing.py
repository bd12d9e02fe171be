"""Differencing VHDX (.avhdx) over VHDX parents: model, libvhdi, linkage, locators, refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vhdxwriter import Block, Vhdx, parent_locator_for, write_vhdx

from tests.tooling import need, run, vhdimount
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.errors import ParentMismatch, ParentNotFound
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.vhdx import format as fmt

MiB = 1 << 20
SIZE = 8 * MiB


def _pattern(seed: int, length: int) -> bytes:
    return (bytes([seed % 251 + 1]) + seed.to_bytes(3, "little")) * (length // 4)


def _parent(folder, lss: int = 512, name: str = "base.vhdx") -> tuple[Vhdx, bytearray]:
    parent = Vhdx(size=SIZE, block_size=1 * MiB, logical_sector_size=lss)
    model = bytearray(SIZE)
    for i, (offset, length) in enumerate([(0, 3 * MiB), (5 * MiB, 64 * 1024), (7 * MiB + 4096, 8192)]):
        data = _pattern(i + 1, length)
        parent.write(offset, data)
        model[offset:offset + length] = data
    write_vhdx(folder / name, parent)
    return parent, model


def _child(parent: Vhdx, **paths: str) -> Vhdx:
    paths = paths or {"relative_path": ".\\base.vhdx", "absolute_win32_path": "C:\\VMs\\base.vhdx"}
    return Vhdx(size=parent.size, block_size=parent.block_size,
                logical_sector_size=parent.logical_sector_size,
                parent_locator=parent_locator_for(parent.data_write_guid, **paths))


child_writes = st.lists(st.tuples(st.integers(0, SIZE // 512 - 1), st.integers(1, 3000),
                                  st.integers(1, 10**6)), max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=child_writes, states=st.dictionaries(st.integers(0, 7), st.sampled_from(
    [fmt.PAYLOAD_BLOCK_ZERO, fmt.PAYLOAD_BLOCK_UNMAPPED, fmt.PAYLOAD_BLOCK_UNDEFINED,
     fmt.PAYLOAD_BLOCK_NOT_PRESENT]), max_size=3), lss=st.sampled_from([512, 4096]))
def test_differencing_reads_as_the_model(tmp_path_factory, writes, states, lss):
    folder = tmp_path_factory.mktemp("diff")
    parent, model = _parent(folder, lss)
    child = _child(parent)
    for block, state in states.items():
        child.blocks[block] = Block(state)
        if state != fmt.PAYLOAD_BLOCK_NOT_PRESENT:
            model[block * MiB:(block + 1) * MiB] = bytes(MiB)  # described here as zeros
    for first, count, seed in writes:
        offset = first * 512 - first * 512 % lss
        length = -(-min(count * 512, SIZE - offset) // lss) * lss
        data = _pattern(seed, length)
        child.write(offset, data)
        model[offset:offset + length] = data
    write_vhdx(folder / "child.avhdx", child)
    with open_chain(str(folder / "child.avhdx")) as chain:
        assert [layer.is_differencing for layer in chain.layers] == [True, False]
        assert chain.links[0].found_by == "relative_path"
        assert chain.read(0, SIZE) == bytes(model)


@pytest.mark.interop
@pytest.mark.fuse
def test_three_layer_chain_with_4k_sectors_reads_as_libvhdi(tmp_path):
    parent, model = _parent(tmp_path, 4096)
    mid = _child(parent)
    mid.write(4096, _pattern(7, 8192))
    model[4096:4096 + 8192] = _pattern(7, 8192)
    mid.write(2 * MiB, _pattern(8, MiB))  # a whole block: fully present is not required
    model[2 * MiB:3 * MiB] = _pattern(8, MiB)
    write_vhdx(tmp_path / "mid.avhdx", mid)
    top = Vhdx(size=SIZE, block_size=MiB, logical_sector_size=4096,
               parent_locator=parent_locator_for(mid.data_write_guid,
                                                 absolute_win32_path="D:\\Hyper-V\\mid.avhdx"))
    top.write(8192, _pattern(9, 4096))
    model[8192:12288] = _pattern(9, 4096)
    write_vhdx(tmp_path / "top.avhdx", top)
    with open_chain(str(tmp_path / "top.avhdx")) as chain:
        assert len(chain.layers) == 3 and chain.top.logical_sector_size == 4096
        ours = chain.read(0, SIZE)
    assert ours == bytes(model)
    with vhdimount(tmp_path / "top.avhdx", tmp_path / "mnt") as flat:
        assert flat.read_bytes() == ours


@pytest.mark.interop
@pytest.mark.fuse
def test_libvhdi_agrees_on_partial_blocks_and_disagrees_on_zero_state(tmp_path):
    """libvhdi 20210425 reads ZERO/UNMAPPED blocks of a differencing VHDX from the parent.

    [MS-VHDX] 2.5.1.1: a ZERO block's contents are zero; we follow the spec. Everything
    else (partially present sectors, not-present blocks) libvhdi reads as we do.
    """
    parent, model = _parent(tmp_path)
    child = _child(parent)
    child.write(512, _pattern(5, 1536))  # sectors 1-3: shares a bitmap byte with sector 0
    child.write(MiB + 7 * 512, _pattern(6, 512))
    child.blocks[2] = Block(fmt.PAYLOAD_BLOCK_ZERO)
    write_vhdx(tmp_path / "child.avhdx", child)
    with open_chain(str(tmp_path / "child.avhdx")) as chain:
        ours = chain.read(0, SIZE)
    with vhdimount(tmp_path / "child.avhdx", tmp_path / "mnt") as flat:
        theirs = flat.read_bytes()
    block2 = slice(2 * MiB, 3 * MiB)
    assert ours[block2] == bytes(MiB)  # the spec: zeros
    assert theirs[block2] == bytes(model[block2]) != bytes(MiB)  # libvhdi: the parent's data
    assert ours[:2 * MiB] == theirs[:2 * MiB] and ours[3 * MiB:] == theirs[3 * MiB:]
    assert ours[512:2048] == _pattern(5, 1536) and ours[:512] == model[:512]


@pytest.mark.interop
@pytest.mark.fuse
def test_libvhdi_needs_lower_case_linkage_and_an_absolute_path(tmp_path):
    """libvhdi 20210425 parses parent_linkage only in lower case and never uses relative_path
    (it looks the key up with a wrong length); we accept both spellings and all path keys."""
    parent, model = _parent(tmp_path)
    child = Vhdx(size=SIZE, block_size=MiB, parent_locator=parent_locator_for(
        parent.data_write_guid, upper=True, relative_path=".\\base.vhdx",
        absolute_win32_path="C:\\VMs\\base.vhdx"))
    write_vhdx(tmp_path / "upper.avhdx", child)
    with open_chain(str(tmp_path / "upper.avhdx")) as chain:
        assert chain.read(0, SIZE) == bytes(model)
    with pytest.raises(RuntimeError, match="parent"), \
            vhdimount(tmp_path / "upper.avhdx", tmp_path / "mnt"):
        pass
    only_relative = _child(parent, relative_path=".\\base.vhdx")
    write_vhdx(tmp_path / "relative.avhdx", only_relative)
    with open_chain(str(tmp_path / "relative.avhdx")) as chain:
        assert chain.links[0].found_by == "relative_path"
    with pytest.raises(RuntimeError, match="parent"), \
            vhdimount(tmp_path / "relative.avhdx", tmp_path / "mnt2"):
        pass


def test_linkage_must_name_the_parents_data_write_guid(tmp_path):
    parent, _ = _parent(tmp_path)
    stranger = Vhdx(size=SIZE)  # its DataWriteGuid is not the one the child names
    write_vhdx(tmp_path / "base.vhdx", stranger)
    write_vhdx(tmp_path / "child.avhdx", _child(parent))
    with pytest.raises(ParentMismatch) as caught:
        open_chain(str(tmp_path / "child.avhdx"))
    message = str(caught.value)
    assert fmt.guid_text(parent.data_write_guid) in message
    assert fmt.guid_text(stranger.data_write_guid) in message


def test_parent_linkage2_is_accepted(tmp_path):
    parent, model = _parent(tmp_path)
    child = _child(parent)
    child.parent_locator["parent_linkage"] = "{00000000-1111-2222-3333-444444444444}"
    child.parent_locator["parent_linkage2"] = "{" + fmt.guid_text(parent.data_write_guid) + "}"
    write_vhdx(tmp_path / "child.avhdx", child)
    with open_chain(str(tmp_path / "child.avhdx")) as chain:
        assert chain.read(0, SIZE) == bytes(model)


def test_volume_path_and_windows_absolute_path_fall_back_to_the_childs_folder(tmp_path):
    parent, model = _parent(tmp_path)
    child = _child(parent, volume_path="\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\VMs\\base.vhdx")
    write_vhdx(tmp_path / "child.avhdx", child)
    with open_chain(str(tmp_path / "child.avhdx")) as chain:
        assert chain.links[0].found_by == "volume_path"
        assert chain.read(0, SIZE) == bytes(model)


def test_missing_parent_names_the_places_tried(tmp_path):
    parent, _ = _parent(tmp_path, name="elsewhere.vhdx")
    write_vhdx(tmp_path / "child.avhdx", _child(parent))
    with pytest.raises(ParentNotFound) as caught:
        open_chain(str(tmp_path / "child.avhdx"))
    assert "base.vhdx" in str(caught.value) and "--parent" in str(caught.value)
    with open_chain(str(tmp_path / "child.avhdx"),
                    OpenOptions(parents=[str(tmp_path / "elsewhere.vhdx")])) as chain:
        assert chain.links[0].found_by == "--parent"


def test_vhdx_child_over_vhd_parent_is_refused(tmp_path):
    create_dynamic(tmp_path / "base.vhd", SIZE)
    with open_chain(str(tmp_path / "base.vhd")) as base:
        vhd_id = base.top.unique_id
    child = Vhdx(size=SIZE, parent_locator=parent_locator_for(vhd_id, relative_path=".\\base.vhd"))
    write_vhdx(tmp_path / "child.avhdx", child)
    with pytest.raises(ParentMismatch, match="VHD image, but a VHDX differencing disk can only"):
        open_chain(str(tmp_path / "child.avhdx"))


def test_vhd_child_over_vhdx_parent_is_refused(tmp_path):
    parent, _ = _parent(tmp_path)
    # vhdfs create refuses to make one ...
    done = subprocess.run([sys.executable, "-m", "vhdfs", "create", str(tmp_path / "child.vhd"),
                           "--parent", str(tmp_path / "base.vhdx")], capture_output=True, text=True)
    assert done.returncode == 6, done.stderr
    assert "can only have a VHD parent" in done.stderr and not (tmp_path / "child.vhd").exists()
    # ... and a VHD child whose parent file turns out to be a VHDX is refused when opened.
    create_dynamic(tmp_path / "other.vhd", SIZE)
    with open_chain(str(tmp_path / "other.vhd")) as base:
        create_differencing(tmp_path / "child.vhd", parent_info_of(tmp_path / "other.vhd", base.top))
    (tmp_path / "other.vhd").unlink()
    (tmp_path / "base.vhdx").rename(tmp_path / "other.vhd")
    with pytest.raises(ParentMismatch, match="VHDX image, but a VHD differencing disk can only"):
        open_chain(str(tmp_path / "child.vhd"))


@pytest.mark.interop
def test_cli_converts_a_checkpoint_chain_to_an_azure_fixed_vhd(tmp_path):
    need("qemu-img")
    parent, model = _parent(tmp_path)
    child = _child(parent)
    child.write(MiB + 512, _pattern(3, 4096))
    model[MiB + 512:MiB + 512 + 4096] = _pattern(3, 4096)
    write_vhdx(tmp_path / "chain.avhdx", child)
    out = tmp_path / "out.vhd"
    done = subprocess.run([sys.executable, "-m", "vhdfs", "convert", str(tmp_path / "chain.avhdx"),
                           str(out), "--to", "fixed"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size == SIZE + 512 and (out.stat().st_size - 512) % MiB == 0
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", out, tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes() == bytes(model)
    info = subprocess.run([sys.executable, "-m", "vhdfs", "info", str(tmp_path / "chain.avhdx")],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "differencing" in info.stdout and "(by relative_path)" in info.stdout
    assert fmt.guid_text(parent.data_write_guid) in info.stdout

