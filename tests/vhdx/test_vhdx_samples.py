"""The qemu sample VHDX images read as qemu-img reads them (after log replay)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
from conftest import need, qemu_compare, run

from vhdfs.chain import Chain
from vhdfs.convert import convert
from vhdfs.resolve import open_chain
from vhdfs.vhdx import layer as vhdx_layer
from vhdfs.vhdx.layer import VhdxLayer

DYNAMIC = "iotest-dynamic-1G.vhdx"
DIRTY = "iotest-dirtylog-10G-4M.vhdx"


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dynamic_sample_reads_as_qemu(samples, tmp_path):
    image = samples(DYNAMIC)
    with open_chain(str(image)) as chain:
        layer = chain.top
        assert isinstance(layer, VhdxLayer)
        assert (chain.size, layer.block_size, layer.logical_sector_size) == (1 << 30, 32 << 20, 512)
        assert layer.replay is None and not layer.warnings
        convert(chain, tmp_path / "ours.raw", "raw")
    verdict = qemu_compare(image, tmp_path / "ours.raw")
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_dirty_log_sample_is_replayed_in_memory(samples, tmp_path):
    need("qemu-img")
    image = samples(DIRTY)
    before = _digest(image)
    # qemu refuses to open the dirty image read-only; a repaired copy is its reference.
    reference = tmp_path / "replayed-by-qemu.vhdx"
    shutil.copyfile(image, reference)
    run("qemu-img", "check", "-r", "all", reference)
    with open_chain(str(image)) as chain:
        layer = chain.top
        assert layer.replay is not None and len(layer.replay.entries) == 1
        assert any("not yet replayed" in w for w in layer.warnings)
        convert(chain, tmp_path / "ours.raw", "raw")
    verdict = qemu_compare(reference, tmp_path / "ours.raw")
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert _digest(image) == before, "reading must not change the file"


def test_dirty_log_sample_without_replay_reads_differently(samples, tmp_path, monkeypatch):
    """The replay matters: with it switched off the image reads differently from qemu."""
    image = samples(DIRTY)
    reference = tmp_path / "replayed-by-qemu.vhdx"
    shutil.copyfile(image, reference)
    run("qemu-img", "check", "-r", "all", reference)
    monkeypatch.setattr(vhdx_layer, "replay_log", lambda *args: None)
    with open_chain(str(image)) as chain:
        assert chain.top.replay is None
        convert(chain, tmp_path / "unreplayed.raw", "raw")
    assert qemu_compare(reference, tmp_path / "unreplayed.raw").returncode == 1


def test_vhdfs_info_on_dirty_sample(samples):
    layer = VhdxLayer(_local(samples(DIRTY)))
    try:
        facts = layer.describe()
    finally:
        layer.close()
    assert facts["format"] == "vhdx" and facts["disk_type"] == "dynamic"
    assert facts["block_size"] == 1 << 20 and facts["virtual_size"] == 10 << 30
    assert facts["log"] == "1 entries replayed in memory"
    assert facts["creator"].startswith("QEMU")


def _local(path):
    from vhdfs.sources.local import LocalFile
    return LocalFile(path)


@pytest.mark.parametrize("name", [DYNAMIC, DIRTY])
def test_samples_convert_to_azure_fixed_vhd(samples, tmp_path, name):
    """A fixed VHD from a VHDX: raw data + footer, readable by qemu-img as the same disk."""
    image = samples(name)
    out = tmp_path / "out.vhd"
    with open_chain(str(image)) as chain:
        convert(chain, out, "fixed")
        size = chain.size
    assert out.stat().st_size == size + 512 and size % (1 << 20) == 0
    info = json.loads(run("qemu-img", "info", "-f", "vpc", "--output=json", out))
    assert info["virtual-size"] == size
    with open_chain(str(out)) as flat:
        assert flat.top.disk_type.name == "FIXED"
    reference = tmp_path / "ref.vhdx"
    shutil.copyfile(image, reference)
    run("qemu-img", "check", "-r", "all", reference)
    verdict = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "vhdx", str(out),
                              str(reference)], capture_output=True, text=True)
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_chain_of_one_vhdx_layer_has_no_links(samples):
    with open_chain(str(samples(DYNAMIC))) as chain:
        assert isinstance(chain, Chain) and chain.links == [] and len(chain.layers) == 1
