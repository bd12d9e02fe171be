"""vhdfs resize: fixed, dynamic and differencing VHDs made larger or smaller in place, against
a model (the same raw disk grown with truncate), qemu-img and the refusals a user meets."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.common import new_sparse_file, run_tool
from tests.ops.conftest import KiB, MiB, cli, fill, flat, make_base, make_child
from tests.tooling import need
from vhdfs.errors import ParentMismatch, RefusedError, UsageError
from vhdfs.maintain.check import check_image
from vhdfs.maintain.findings import ERROR
from vhdfs.resize import new_size_for, resize
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer
from vhdfs.vhd.layer import Layer

SECTOR = 512


def footer_of(path: Path) -> Footer:
    raw = path.read_bytes()[-FOOTER_SIZE:]
    return Footer.parse(raw, path.name, 0)


def errors_of(path: Path) -> list[str]:
    report = check_image(str(path))
    return [f"{f.code}: {f.message}" for layer in report.layers for f in layer.findings
            if f.severity == ERROR]


def grown(data: bytes, size: int) -> bytes:
    """The model: what `truncate -s` makes of a raw disk."""
    return data[:size] + bytes(max(0, size - len(data)))


def dynamic_with_data(path: Path, size: int, block_size: int, writes: list[tuple[int, bytes]]) -> bytes:
    make_base(path, "dynamic", size, block_size)
    fill(path, writes)
    return flat(path)


def qemu_compare(image: Path, raw: Path) -> None:
    need("qemu-img")
    done = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "raw", str(image), str(raw)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ growing
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_grown_disk_equals_the_raw_grown_with_truncate_for_qemu(tmp_path: Path, kind: str) -> None:
    rnd = random.Random(1)
    image = make_base(tmp_path / "disk.vhd", kind, 8 * MiB, 512 * KiB)
    fill(image, [(0, rnd.randbytes(64 * KiB)), (8 * MiB - 4096, rnd.randbytes(4096)),
                 (3 * MiB + 512, rnd.randbytes(1536))])
    raw = tmp_path / "disk.raw"
    raw.write_bytes(flat(image))
    report = resize(str(image), "40M")
    assert (report.old_size, report.new_size) == (8 * MiB, 40 * MiB)
    os.truncate(raw, 40 * MiB)
    assert flat(image) == raw.read_bytes()
    qemu_compare(image, raw)
    assert errors_of(image) == []
    # The footer's geometry is the one create writes for that size.
    footer, fresh = footer_of(image), Footer.new(DiskType.FIXED, 40 * MiB)
    assert (footer.cylinders, footer.heads, footer.sectors_per_track) == \
        (fresh.cylinders, fresh.heads, fresh.sectors_per_track)
    assert footer.current_size == 40 * MiB and footer.original_size == 8 * MiB
    if kind == "dynamic":
        copy = Footer.parse(image.read_bytes()[:FOOTER_SIZE], image.name, 0)
        assert copy == footer


def test_a_bat_without_room_grows_over_blocks_moved_to_the_end(tmp_path: Path) -> None:
    """4 KiB blocks: 2048 entries fill the table's 16 sectors; 40 MiB needs 10240 entries,
    80 sectors, where the first blocks are stored: they move to the end of the file."""
    rnd = random.Random(2)
    writes = [(i * 4 * KiB, rnd.randbytes(4 * KiB)) for i in range(6)] + \
        [(8 * MiB - 1024, rnd.randbytes(1024))]
    image = tmp_path / "disk.vhd"
    before = dynamic_with_data(image, 8 * MiB, 4 * KiB, writes)
    with Layer(LocalFile(image)) as layer:
        first_blocks = sorted(layer.bat)[:3]
        table_at = layer.header.table_offset
    report = resize(str(image), "40M")
    assert report.moved_blocks == 4
    assert report.table_entries == 10240
    with Layer(LocalFile(image)) as layer:
        assert layer.header.max_table_entries == 10240
        assert min(layer.bat[i] for i in range(len(layer.bat)) if layer.bat[i] != 0xFFFFFFFF) \
            * SECTOR >= table_at + 10240 * 4  # every block now lies past the table
        assert first_blocks != sorted(layer.bat)[:3]
    assert flat(image) == grown(before, 40 * MiB)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(grown(before, 40 * MiB))
    qemu_compare(image, raw)
    assert errors_of(image) == []
    # and the disk takes writes past the old end, where new blocks are allocated
    fill(image, [(39 * MiB, b"\x5a" * 8192)])
    expected = bytearray(grown(before, 40 * MiB))
    expected[39 * MiB:39 * MiB + 8192] = b"\x5a" * 8192
    assert flat(image) == bytes(expected)
    assert errors_of(image) == []


def test_growing_clears_what_the_last_block_holds_past_the_old_end(tmp_path: Path) -> None:
    """A dynamic disk whose size ends inside a block, with bytes stored past that end (another
    writer's leftovers): the grown disk reads zeros there, as truncate's would."""
    image = tmp_path / "disk.vhd"
    before = dynamic_with_data(image, 8 * MiB, 2 * MiB, [(6 * MiB, b"\x11" * (2 * MiB))])
    resize(str(image), str(7 * MiB), force=True)  # shrink into the block: its tail is cut...
    with Layer(LocalFile(image)) as layer:  # ...and stuff is put back there behind our back
        data_at = layer.block_data_offset(3)
    with open(image, "r+b") as handle:
        handle.seek(data_at + MiB)
        handle.write(b"\x22" * MiB)
    resize(str(image), "12M")
    assert flat(image) == grown(before[:7 * MiB], 12 * MiB)


# ------------------------------------------------------------------ shrinking
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_shrinking_keeps_what_is_before_the_new_end_and_refuses_to_cut_data(
        tmp_path: Path, kind: str) -> None:
    image = make_base(tmp_path / "disk.vhd", kind, 16 * MiB, 512 * KiB)
    fill(image, [(0, b"\x01" * 4096), (9 * MiB + 512, b"\x02" * 512)])
    before = flat(image)
    with pytest.raises(RefusedError, match=f"data past the new end, the first at offset {9 * MiB + 512}"):
        resize(str(image), "8M")
    assert flat(image) == before  # nothing was written
    report = resize(str(image), "10M")  # zeros past 10 MiB: no --force needed
    assert report.new_size == 10 * MiB and report.cut == 0
    assert flat(image) == before[:10 * MiB]
    assert errors_of(image) == []
    done = cli("resize", image, "8M", "--force", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cut"] == 512  # the one sector that held data
    assert any("--force: cutting" in w and str(9 * MiB + 512) in w for w in result["warnings"])
    assert flat(image) == before[:8 * MiB]
    assert errors_of(image) == []
    # Grown again, the cut part reads zeros (the last block's tail was cleared).
    resize(str(image), "16M")
    assert flat(image) == grown(before[:8 * MiB], 16 * MiB)
    if kind == "fixed":
        assert image.stat().st_size == 16 * MiB + FOOTER_SIZE


def test_shrinking_gives_back_the_space_of_blocks_at_the_end(tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    dynamic_with_data(image, 16 * MiB, 512 * KiB, [(0, b"\x01" * 4096), (12 * MiB, b"\x02" * 4096)])
    big = image.stat().st_size
    resize(str(image), "8M", force=True)
    assert image.stat().st_size < big - 512 * KiB
    assert errors_of(image) == []


def test_a_partition_past_the_new_end_is_refused_and_gpt_backup_is_not_data(tmp_path: Path) -> None:
    """A GPT disk: the backup table at its end is no reason to refuse a shrink (sgdisk -e
    writes it at the new end), a partition past the new end is; growing names sgdisk -e."""
    raw = tmp_path / "gpt.raw"
    new_sparse_file(raw, 32 * MiB)
    run_tool(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(raw)],
             input=b"label: gpt\nstart=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n")
    image = tmp_path / "gpt.vhd"
    assert cli("convert", raw, image, "--to", "dynamic").returncode == 0
    refused = cli("resize", image, "8M")
    assert refused.returncode == 6
    assert "partition 1 (Linux filesystem) ends at byte 11534336" in refused.stderr
    done = cli("resize", image, "16M", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["partition_table"] == "gpt" and result["cut"] == 0
    assert any("sgdisk -e" in step for step in result["next_steps"])
    # What the next step says works: sgdisk -e on the disk, then the table verifies clean.
    need("sgdisk")
    out = tmp_path / "after.raw"
    assert cli("convert", image, out, "--to", "raw").returncode == 0
    subprocess.run(["sgdisk", "-e", str(out)], check=True, capture_output=True)
    verify = subprocess.run(["sgdisk", "-v", str(out)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout
    grow = json.loads(cli("resize", image, "64M", "--json").stdout)
    assert any("sgdisk -e" in s for s in grow["next_steps"])
    assert any("Extend Volume" in s and "resize2fs" in s for s in grow["next_steps"])


# ------------------------------------------------------------------ sizes
def test_sizes_as_given_relative_and_aligned() -> None:
    current = 64 * MiB + 512
    assert new_size_for(current, "1G", align=False) == 1 << 30
    assert new_size_for(current, "+1M", align=False) == 65 * MiB + 512
    assert new_size_for(current, "-512", align=False) == 64 * MiB
    assert new_size_for(current, None, align=True) == 65 * MiB  # Azure's whole MiB
    assert new_size_for(current, "100000000", align=True) == 96 * MiB
    with pytest.raises(UsageError, match="not a whole number of 512-byte sectors; use 1024"):
        new_size_for(current, "1000", align=False)
    with pytest.raises(UsageError, match="needs SIZE"):
        new_size_for(current, None, align=False)
    with pytest.raises(UsageError, match="give a positive size"):
        new_size_for(current, "-1G", align=False)


def test_align_makes_the_size_azure_takes(tmp_path: Path) -> None:
    image = make_base(tmp_path / "odd.vhd", "dynamic", 64 * MiB + 512)
    done = cli("resize", image, "--align")
    assert done.returncode == 0, done.stderr
    assert footer_of(image).current_size == 65 * MiB
    assert cli("resize", image, "--align").stdout.strip().endswith("nothing changed")


# ------------------------------------------------------------------ chains
def test_a_child_follows_its_base_in_hyper_v_order(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.vhd", "dynamic", 8 * MiB, 512 * KiB)
    fill(base, [(0, b"\x0b" * 8192)])
    child = make_child(base, tmp_path / "child.vhd")
    fill(child, [(4096, b"\x0c" * 8192)])
    before = flat(child)
    # The child alone: refused, naming its parent and the order.
    alone = cli("resize", child, "16M")
    assert alone.returncode == 6
    assert "cannot change size alone" in alone.stderr and "base.vhd" in alone.stderr
    assert "first the base" in alone.stderr
    # The base while it has a child: refused, naming the child.
    refused = cli("resize", base, "16M")
    assert refused.returncode == 6
    assert "child.vhd" in refused.stderr and "--force" in refused.stderr
    assert flat(child) == before
    # The order: the base with --force (a warning names the child), then the child.
    done = cli("resize", base, "16M", "--force", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["children"] == [str(child)]
    assert any("vhdfs resize" in s and "child.vhd" in s for s in result["next_steps"])
    with pytest.raises(ParentMismatch, match="the sizes must agree"):
        open_chain(str(child))
    with pytest.raises(ParentMismatch):  # to another size than its parent's
        resize(str(child), "32M")
    report = resize(str(child), "16M")
    assert report.parent == str(base) and report.kind == "differencing"
    assert flat(child) == grown(before, 16 * MiB)
    assert errors_of(child) == []
    # The grown child takes writes past the old end, over its parent's (zero) data.
    fill(child, [(12 * MiB, b"\x0d" * 4096)])
    assert flat(child)[12 * MiB:12 * MiB + 4096] == b"\x0d" * 4096


def test_a_shrunk_child_keeps_no_bits_past_its_end(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.vhd", "dynamic", 8 * MiB, 2 * MiB)
    child = make_child(base, tmp_path / "child.vhd")
    fill(child, [(5 * MiB, b"\x0c" * MiB)])
    resize(str(base), "5M", force=True)
    with pytest.raises(RefusedError, match="data past the new end"):
        resize(str(child), "5M")
    resize(str(child), "5M", force=True)
    resize(str(base), "8M", force=True)
    resize(str(child), "8M")
    assert flat(child)[5 * MiB:] == bytes(3 * MiB)  # the cut sectors do not come back
    assert errors_of(child) == []


# ------------------------------------------------------------------ refusals
def test_what_resize_refuses_and_how(tmp_path: Path) -> None:  # VHDX: test_what_vhdx_resize_refuses
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(MiB))
    done = cli("resize", raw, "2M")
    assert done.returncode == 6 and "truncate -s SIZE" in done.stderr
    done = cli("resize", "az://container/disk.vhd", "16M")
    assert done.returncode == 2 and "local file" in done.stderr
    done = cli("resize", tmp_path / "missing.vhd", "16M")
    assert done.returncode == 5 and "no such file" in done.stderr
    image = make_base(tmp_path / "disk.vhd", "dynamic", 8 * MiB)
    done = cli("resize", image, "16M", "-U")
    assert done.returncode == 2 and "--force-share" in done.stderr
    done = cli("resize", image, "3000G")
    assert done.returncode == 2 and "exceeds the VHD limit" in done.stderr
    assert footer_of(image).current_size == 8 * MiB


def test_a_busy_image_is_refused(tmp_path: Path) -> None:
    image = make_base(tmp_path / "disk.vhd", "dynamic", 8 * MiB)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vhdfs.sources.local import LocalFile\n"
         f"f = LocalFile({str(image)!r})\nprint('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        done = cli("resize", image, "16M")
        assert done.returncode == 9, done.stderr
        assert "in use" in done.stderr
    finally:
        holder.kill()
        holder.wait()
    assert footer_of(image).current_size == 8 * MiB


def test_qemu_img_resize_refuses_vhd_and_ruins_a_fixed_one_it_takes_for_raw(tmp_path: Path) -> None:
    """What docs/maintain.md records about qemu-img resize (7.2): the vpc driver does not
    resize; without -f, a fixed VHD is probed as raw and resize cuts its footer off."""
    need("qemu-img")
    image = make_base(tmp_path / "fixed.vhd", "fixed", 8 * MiB)
    done = subprocess.run(["qemu-img", "resize", "-f", "vpc", str(image), "16M"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "does not support resize" in done.stderr
    shutil.copyfile(image, tmp_path / "probed.vhd")
    done = subprocess.run(["qemu-img", "resize", str(tmp_path / "probed.vhd"), "16M"],
                          capture_output=True, text=True)
    assert done.returncode == 0  # ...and the file no longer ends with a footer
    assert cli("info", tmp_path / "probed.vhd").returncode == 3


# ------------------------------------------------------------------ the model
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["fixed", "dynamic", "dynamic-small"]),
       steps=st.lists(st.integers(1, 96), min_size=1, max_size=5))
def test_resizes_match_a_model(tmp_path_factory: pytest.TempPathFactory, seed: int, kind: str,
                               steps: list[int]) -> None:
    """Any sequence of grows and (forced) shrinks, with writes in between, reads as the model
    of a raw disk truncated to each size; check finds nothing."""
    folder = tmp_path_factory.mktemp("model")
    rnd = random.Random(seed)
    block = 4 * KiB if kind == "dynamic-small" else 512 * KiB
    size = rnd.randrange(1, 64) * 64 * KiB
    image = make_base(folder / "disk.vhd", "fixed" if kind == "fixed" else "dynamic", size, block)
    model = bytearray(size)
    for sectors in steps:
        length = rnd.randrange(1, 32) * SECTOR
        offset = rnd.randrange(0, (len(model) - length) // SECTOR + 1) * SECTOR if len(model) > length else 0
        data = rnd.randbytes(min(length, len(model)))
        fill(image, [(offset, data)])
        model[offset:offset + len(data)] = data
        new = sectors * 32 * KiB
        resize(str(image), str(new), force=True)
        model = bytearray(grown(bytes(model), new))
        assert flat(image) == bytes(model)
    assert errors_of(image) == []
    with open_chain(str(image), OpenOptions()) as chain:
        assert chain.size == len(model)


def test_verify_names_the_resize_that_fixes_the_size_and_it_does(tmp_path: Path) -> None:
    image = make_base(tmp_path / "odd.vhd", "dynamic", 64 * MiB + 512)
    report = json.loads(cli("verify", image, "--json").stdout)
    size = [f for f in report["findings"] if f["check"] == "size" and f["status"] == "fail"]
    assert len(size) == 1
    command = size[0]["message"].split("resize it with: ", 1)[1]
    assert command == f"vhdfs resize {image} {65 * MiB}"  # one command, in place
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    subprocess.run(["sh", "-c", command], env=env, check=True, capture_output=True)
    after = json.loads(cli("verify", image, "--json").stdout)
    assert [f["status"] for f in after["findings"] if f["check"] == "size"] == ["pass", "pass"]


# ------------------------------------------------------------------ VHDX
def vhdx_with_data(path: Path, size: int, block: str, writes: list[tuple[int, bytes]]) -> bytes:
    assert cli("create", path, "--size", str(size), "--block-size", block).returncode == 0
    fill(path, writes)
    return flat(path)


def test_a_dynamic_vhdx_grows_through_its_log_as_qemu_reads_it(tmp_path: Path) -> None:
    from vhdfs.vhdx import format as fmt
    from vhdfs.vhdx.layer import VhdxLayer

    rnd = random.Random(7)
    image = tmp_path / "disk.vhdx"
    old_size = 9 * MiB + 512  # the last 8 MiB block is partly past the end
    before = vhdx_with_data(image, old_size, "8M", [(0, rnd.randbytes(64 * KiB)),
                                                     (old_size - 4096, rnd.randbytes(4096))])
    with VhdxLayer(LocalFile(image)) as layer:  # another writer's leftovers past the end:
        entry = layer.bat[fmt.payload_index(1, layer.chunk_ratio)]  # the last block's tail...
        tail_at = (entry & fmt.OFFSET_MASK) + (old_size - 8 * MiB)
        bat_at = layer.regions[fmt.BAT_REGION].start
        first = layer.bat[fmt.payload_index(0, layer.chunk_ratio)] & fmt.OFFSET_MASK
        stale = fmt.bat_entry(fmt.PAYLOAD_BLOCK_FULLY_PRESENT, first)  # block 0's data
    with open(image, "r+b") as handle:
        handle.seek(tail_at)
        handle.write(b"\x77" * 8192)
        handle.seek(bat_at + 3 * 8)  # ...and a stale entry for block 3, past the old end
        handle.write(stale.to_bytes(8, "little"))
    assert flat(image) == before  # the old disk does not show them
    done = cli("resize", image, "40M", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["format"], result["kind"], result["new_size"]) == ("vhdx", "dynamic", 40 * MiB)
    assert flat(image) == grown(before, 40 * MiB)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(grown(before, 40 * MiB))
    need("qemu-img")
    done = subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", str(image), str(raw)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    check = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(image)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert errors_of(image) == []
    fill(image, [(30 * MiB, b"\x42" * 4096)])  # and it takes writes past the old end
    assert flat(image)[30 * MiB:30 * MiB + 4096] == b"\x42" * 4096


def test_what_vhdx_resize_refuses(tmp_path: Path) -> None:
    small = tmp_path / "small.vhdx"
    assert cli("create", small, "--size", "64M", "--block-size", "1M").returncode == 0
    done = cli("resize", small, "200G")  # 1 MiB blocks: its BAT region holds 128 GiB
    assert done.returncode == 6 and "its BAT region holds 131072 entries" in done.stderr
    done = cli("resize", small, "32M")
    assert done.returncode == 6 and "shrinking a VHDX is not supported" in done.stderr
    fixed = tmp_path / "fixed.vhdx"
    assert cli("create", fixed, "--size", "8M", "--fixed").returncode == 0
    done = cli("resize", fixed, "16M")
    assert done.returncode == 6 and "is a fixed VHDX" in done.stderr
    child = tmp_path / "child.avhdx"
    assert cli("create", child, "--parent", small).returncode == 0
    done = cli("resize", child, "128M")
    assert done.returncode == 6 and "differencing VHDX" in done.stderr
    done = cli("resize", small, "128M")  # a base with a child
    assert done.returncode == 6 and "child.avhdx" in done.stderr
    for path in (small, fixed, child):
        assert errors_of(path) == []
