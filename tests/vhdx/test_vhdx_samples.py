"""Sample VHDX images read as qemu-img reads them (after log replay).

Each case runs on an image made here (qemu-img's dynamic VHDX; the test writer's file with an
unreplayed log) and on the matching qemu iotest sample when the samples folder has it
(tests/fixtures/samples.py says where; skipped with that place otherwise).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from vhdxtools import differences_from_raw, qemu_raw, run

from tests.fixtures.samples import MADE_DIRTY_LOG, MADE_DYNAMIC, QEMU_DIRTY_LOG_SAMPLE, QEMU_DYNAMIC_SAMPLE
from vhdfs.convert import convert
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import layer as vhdx_layer
from vhdfs.vhdx.layer import VhdxLayer

#: Dynamic VHDX, 1 GiB, 32 MiB blocks: made by qemu-img here, and qemu's sample (Hyper-V's).
DYNAMIC = [pytest.param(MADE_DYNAMIC, id="made"),
           pytest.param(QEMU_DYNAMIC_SAMPLE, id="sample")]
#: Dynamic VHDX, 10 GiB, 1 MiB blocks, one unreplayed log entry, with the creator it names.
DIRTY = [pytest.param(MADE_DIRTY_LOG, "vhdfs test writer", id="made"),
         pytest.param(QEMU_DIRTY_LOG_SAMPLE, "QEMU", id="sample")]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def qemu_reading(samples, tmp_path_factory):
    """qemu-img's raw reading of each sample; a dirty one is first replayed by qemu on a copy
    (qemu refuses to open it read-only: `qemu-img check -r all` replays the log)."""
    folder = tmp_path_factory.mktemp("qemu-reading")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            copy = folder / name
            shutil.copyfile(samples(name), copy)
            run("qemu-img", "check", "-r", "all", copy)
            cache[name] = qemu_raw(copy, folder / f"{name}.raw")
        return cache[name]

    return get


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_sample_reads_as_qemu(samples, qemu_reading, name):
    with open_chain(str(samples(name))) as chain:
        layer = chain.top
        assert isinstance(layer, VhdxLayer)
        assert (chain.size, layer.block_size, layer.logical_sector_size) == (1 << 30, 32 << 20, 512)
        assert layer.replay is None and not layer.warnings
        assert differences_from_raw(chain, qemu_reading(name)) == []


@pytest.mark.parametrize(("name", "creator"), DIRTY)
def test_dirty_log_sample_is_replayed_in_memory(samples, qemu_reading, name, creator):
    image = samples(name)
    before = _digest(image)
    with open_chain(str(image)) as chain:
        layer = chain.top
        assert layer.replay is not None and len(layer.replay.entries) == 1
        assert any("not yet replayed" in w for w in layer.warnings)
        assert differences_from_raw(chain, qemu_reading(name)) == []
    assert _digest(image) == before, "reading must not change the file"


@pytest.mark.parametrize(("name", "creator"), DIRTY)
def test_dirty_log_sample_without_replay_reads_differently(samples, qemu_reading, monkeypatch, name,
                                                           creator):
    """The replay matters: with it switched off the image reads differently from qemu."""
    monkeypatch.setattr(vhdx_layer, "replay_log", lambda *args: None)
    with open_chain(str(samples(name))) as chain:
        assert chain.top.replay is None
        assert differences_from_raw(chain, qemu_reading(name)) != []


@pytest.mark.parametrize(("name", "creator"), DIRTY)
def test_info_facts_of_the_dirty_sample(samples, name, creator):
    with VhdxLayer(LocalFile(samples(name))) as layer:
        facts = layer.describe()
    assert facts["format"] == "vhdx" and facts["disk_type"] == "dynamic"
    assert facts["block_size"] == 1 << 20 and facts["virtual_size"] == 10 << 30
    assert facts["log"] == "1 entries replayed in memory"
    assert facts["creator"].startswith(creator)


@pytest.mark.slow  # reads and writes 1 GiB
@pytest.mark.parametrize("name", DYNAMIC)
def test_sample_converts_to_azure_fixed_vhd(samples, qemu_reading, tmp_path, name):
    """A fixed VHD from a VHDX: raw data + footer, read by qemu-img as the same disk.
    (The 1 GiB sample only: a fixed VHD is read whole, the 10 GiB one would cost seconds.)"""
    out = tmp_path / "out.vhd"
    with open_chain(str(samples(name))) as chain:
        convert(chain, out, "fixed")
        size = chain.size
    assert out.stat().st_size == size + 512 and size % (1 << 20) == 0
    info = json.loads(run("qemu-img", "info", "-f", "vpc", "--output=json", out))
    assert info["virtual-size"] == size
    with open_chain(str(out)) as flat:
        assert flat.top.disk_type.name == "FIXED"
        assert differences_from_raw(flat, qemu_reading(name)) == []
