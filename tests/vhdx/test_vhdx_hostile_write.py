"""Hostile VHDX files meet the write path: a commit that would overflow the log is split, a
file whose log cannot carry a commit, BAT entries pointing into the log or the metadata
region, and a parent locator with a key listed twice are refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from vhdxtools import qemu_compare

from tests.tooling import need
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.errors import FormatError
from vhdfs.resolve import open_chain
from vhdfs.vhdx import build
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx import journal as journal_module
from vhdfs.vhdx import layer as vhdx_layer

MiB = 1 << 20


def _patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _bat_entry_at(block: int, ratio: int) -> int:
    return build.BAT_OFFSET + 8 * fmt.payload_index(block, ratio)


def _one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text and text
    return text


@pytest.mark.interop
def test_a_commit_larger_than_the_log_is_split_into_entries(tmp_path, monkeypatch):
    """300 BAT sectors changed at once (a 1 MiB log holds 254 in one entry): two entries,
    each flushed and applied before the next; qemu-img then reads the same."""
    need("qemu-img")
    size = 150 * 1024 * MiB  # 153,600 one-MiB blocks: 300 BAT sectors of 512 entries
    image = tmp_path / "big.vhdx"
    create_vhdx(image, size, block_size=MiB)
    entries: list[int] = []
    real_entry = journal_module.Journal._entry

    def counting_entry(self, batch):
        entries.append(len(batch))
        return real_entry(self, batch)

    monkeypatch.setattr(journal_module.Journal, "_entry", counting_entry)
    monkeypatch.setattr(vhdx_layer, "AUTO_FLUSH_SECTORS", 10**6)  # one commit for all of them
    with open_chain(str(image), writable=True) as chain:
        for sector in range(300):
            chain.write(sector * 512 * MiB + 4096, sector.to_bytes(2, "little") * 256)
    assert entries == [journal_module.max_entry_sectors(build.LOG_LENGTH), 300 - entries[0]]
    assert entries[0] == 254
    with open_chain(str(image)) as chain:
        assert chain.warnings == []
        for sector in (0, 1, 253, 254, 299):
            assert chain.read(sector * 512 * MiB + 4096, 512) == sector.to_bytes(2, "little") * 256
    checked = subprocess.run(["qemu-img", "check", "-f", "vhdx", str(image)], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _rewrite_headers(path, **changes) -> None:
    raw = path.read_bytes()
    for at in fmt.HEADER_OFFSETS:
        header = fmt.HEADER.parse(raw[at:at + fmt.HEADER_SIZE]).tail.value
        fields = {k: header[k] for k in ("sequence_number", "file_write_guid", "data_write_guid",
                                         "log_guid", "log_version", "version", "log_length",
                                         "log_offset")}
        _patch(path, at, fmt.build_header({**fields, **changes}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"log_length": 0}, "at least 1 MiB"),
    ({"log_length": 64 * 1024}, "at least 1 MiB"),
    ({"log_offset": 512 * 1024}, "past the first"),
], ids=["no-log", "log-too-small", "log-in-the-header-section"])
def test_a_file_whose_log_cannot_carry_a_commit_is_refused_for_writing(tmp_path, changes, message):
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 8 * MiB, block_size=MiB)
    with open_chain(str(image), writable=True) as chain:
        chain.write(0, b"d" * 4096)
    _rewrite_headers(image, **changes)
    with open_chain(str(image)) as chain:  # reading needs no log (its GUID is zero)
        assert chain.read(0, 4096) == b"d" * 4096
    before = image.read_bytes()
    with pytest.raises(FormatError) as refused:
        open_chain(str(image), writable=True)
    assert message in _one_line(refused.value) and "refusing to write" in str(refused.value)
    assert image.read_bytes() == before


@pytest.mark.parametrize("target", ["log", "metadata"])
def test_a_bat_entry_pointing_into_the_log_or_metadata_is_refused_for_writing(tmp_path, target):
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 8 * MiB, block_size=MiB)
    with open_chain(str(image), writable=True) as chain:
        chain.write(0, b"a" * MiB)
        chain.write(6 * MiB, b"b" * 4096)
    into = build.LOG_OFFSET if target == "log" else build.METADATA_OFFSET
    ratio = fmt.chunk_ratio(MiB, 512)
    _patch(image, _bat_entry_at(2, ratio),
           fmt.bat_entry(fmt.PAYLOAD_BLOCK_FULLY_PRESENT, into).to_bytes(8, "little"))
    with open_chain(str(image)) as chain:  # the block is damaged, the rest reads
        assert chain.read(0, MiB) == b"a" * MiB and chain.read(6 * MiB, 4096) == b"b" * 4096
        assert any(f"inside the {target}" in w for w in chain.warnings)
    before = image.read_bytes()
    with pytest.raises(FormatError) as refused:
        open_chain(str(image), writable=True)
    text = _one_line(refused.value)
    assert "block 2" in text and f"inside the {target}" in text and "refusing to write" in text
    assert image.read_bytes() == before


def test_a_sector_bitmap_entry_pointing_into_the_log_is_refused_for_writing(tmp_path):
    """No partially present block uses it yet, so reading is unaffected; a write would put
    bitmap sectors into the log."""
    base = tmp_path / "base.vhdx"
    create_vhdx(base, 8 * MiB, block_size=MiB)
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(tmp_path / "child.avhdx", base, chain.top, block_size=MiB)
    child = tmp_path / "child.avhdx"
    ratio = fmt.chunk_ratio(MiB, 512)
    _patch(child, build.BAT_OFFSET + 8 * fmt.bitmap_index(0, ratio),
           fmt.bat_entry(fmt.SB_BLOCK_PRESENT, build.LOG_OFFSET).to_bytes(8, "little"))
    with open_chain(str(child)) as chain:
        assert chain.read(0, 8 * MiB) == bytes(8 * MiB)
    with pytest.raises(FormatError) as refused:
        open_chain(str(child), writable=True)
    text = _one_line(refused.value)
    assert "sector bitmap of chunk 0" in text and "inside the log" in text


def _locator_with_pairs(pairs: list[tuple[str, str]]) -> bytes:
    head = fmt.PARENT_LOCATOR_HEADER.build(dict(locator_type=fmt.VHDX_PARENT_LOCATOR_TYPE,
                                                reserved=0, key_value_count=len(pairs)))
    entries, strings = b"", b""
    base = len(head) + 12 * len(pairs)
    for key, value in pairs:
        k, v = key.encode("utf-16-le"), value.encode("utf-16-le")
        entries += fmt.PARENT_LOCATOR_ENTRY.build(dict(
            key_offset=base + len(strings), value_offset=base + len(strings) + len(k),
            key_length=len(k), value_length=len(v)))
        strings += k + v
    return head + entries + strings


@pytest.mark.parametrize("key", ["parent_linkage", "relative_path"])
def test_a_parent_locator_with_a_key_listed_twice_is_refused(tmp_path, monkeypatch, key):
    base = tmp_path / "base.vhdx"
    other = tmp_path / "other.vhdx"
    create_vhdx(base, 8 * MiB, block_size=MiB)
    create_vhdx(other, 8 * MiB, block_size=MiB)
    with open_chain(str(other)) as chain:
        other_guid = chain.top.unique_id

    def doubled(values: dict[str, str]) -> bytes:  # the key again, naming another parent
        second = {"parent_linkage": "{" + fmt.guid_text(other_guid) + "}",
                  "relative_path": ".\\other.vhdx"}[key]
        return _locator_with_pairs([*values.items(), (key, second)])

    monkeypatch.setattr(build, "parent_locator_bytes", doubled)
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(tmp_path / "child.avhdx", base, chain.top)
    monkeypatch.undo()
    with pytest.raises(FormatError) as refused:
        open_chain(str(tmp_path / "child.avhdx"))
    assert f"key '{key}' is listed twice" in _one_line(refused.value)
    done = subprocess.run([sys.executable, "-m", "vhdfs", "info", str(tmp_path / "child.avhdx")],
                          capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "listed twice" in done.stderr


@pytest.mark.interop
def test_writes_never_land_in_what_another_structure_owns(tmp_path):
    """New blocks go past the end of the file, whatever a hostile region table placed there:
    a metadata region moved to the end of the file stays intact across writes."""
    need("qemu-img")
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 8 * MiB, block_size=MiB)
    with open(image, "r+b") as f:  # the metadata region copied to a new last MiB
        f.seek(build.METADATA_OFFSET)
        metadata = f.read(build.METADATA_LENGTH)
        end = f.seek(0, 2)
        f.write(metadata)
    regions = fmt.build_region_table([(fmt.BAT_REGION, build.BAT_OFFSET, MiB, True),
                                      (fmt.METADATA_REGION, end, MiB, True)])
    for at in fmt.REGION_TABLE_OFFSETS:
        _patch(image, at, regions)
    _patch(image, build.METADATA_OFFSET, bytes(build.METADATA_LENGTH))  # the old place: gone
    model = bytearray(8 * MiB)
    with open_chain(str(image), writable=True) as chain:
        for block in range(8):
            chain.write(block * MiB + 512, bytes([block + 1]) * 4096)
            model[block * MiB + 512:block * MiB + 512 + 4096] = bytes([block + 1]) * 4096
    with open(image, "rb") as f:
        f.seek(end)
        assert f.read(build.METADATA_LENGTH) == metadata
    with open_chain(str(image)) as chain:
        assert chain.read(0, 8 * MiB) == bytes(model)
    raw = tmp_path / "model.raw"
    raw.write_bytes(bytes(model))
    assert qemu_compare(image, raw).returncode == 0
