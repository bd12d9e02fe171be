"""The rules of a VHDX write session: headers alternate, FileWriteGuid and DataWriteGuid change
when the specification says, the log is used for metadata and left empty by a clean close."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from vhdxtools import qemu_compare
from vhdxwriter import BAT_OFFSET, LogWrite, Vhdx, patch, write_vhdx

from tests.tooling import need
from vhdfs.create import create_vhdx, create_vhdx_differencing
from vhdfs.errors import ParentMismatch
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.layer import VhdxLayer
from vhdfs.vhdx.log import find_active_sequence

MiB = 1 << 20


def headers(path) -> list:
    """Both header copies as parsed (each must be valid)."""
    raw = path.read_bytes()
    return [fmt.HEADER.parse(raw[at:at + fmt.HEADER_SIZE]).tail.value for at in fmt.HEADER_OFFSETS]


def current(path):
    return max(headers(path), key=lambda h: h.sequence_number)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_writable_open_without_writes_changes_nothing(tmp_path):
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 8 * MiB, block_size=MiB)
    before = digest(image)
    with open_chain(str(image), writable=True) as chain:
        chain.flush()
        assert chain.read(0, 4096) == bytes(4096)
    assert digest(image) == before


def test_the_first_data_write_gives_new_guids_in_both_headers(tmp_path):
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 8 * MiB, block_size=MiB)
    old = current(image)
    with open_chain(str(image), writable=True) as chain:
        chain.write(0, b"a" * 4096)
        first = headers(image)
        chain.write(MiB, b"b" * 4096)  # a second write in the session changes no GUID
        chain.flush()
        during = current(image)
    after = headers(image)
    # Both copies were rewritten (sequence +1, +2) with the same new GUIDs.
    assert sorted(h.sequence_number for h in first) == [old.sequence_number + 1,
                                                        old.sequence_number + 2]
    for header in first:
        assert header.file_write_guid != old.file_write_guid
        assert header.data_write_guid != old.data_write_guid
        assert header.log_guid == fmt.ZERO_GUID  # no metadata logged yet
    assert during.data_write_guid == first[0].data_write_guid
    assert during.log_guid != fmt.ZERO_GUID  # the flush went through the log
    # The clean close: both copies say the log is empty; the GUIDs stay.
    for header in after:
        assert header.log_guid == fmt.ZERO_GUID
        assert header.data_write_guid == first[0].data_write_guid
        assert header.file_write_guid == first[0].file_write_guid
        assert header.sequence_number > during.sequence_number
    with open_chain(str(image)) as chain:
        assert chain.top.describe()["log"] == "clean" and chain.warnings == []
        assert chain.read(MiB, 4096) == b"b" * 4096
        assert chain.top.unique_id == first[0].data_write_guid


def test_commits_are_single_entries_at_the_start_of_the_log(tmp_path):
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 64 * MiB, block_size=MiB)
    layer = VhdxLayer(LocalFile(image, writable=True), writable=True)
    try:
        for number in range(3):
            layer.write(number * 7 * MiB, b"x" * 512)
            layer.flush()
            hdr = current(image)
            raw = image.read_bytes()[hdr.log_offset:hdr.log_offset + hdr.log_length]
            entries = find_active_sequence(raw, hdr.log_guid)
            assert [(e.position, e.sequence, e.tail) for e in entries] == [(0, number + 1, 0)]
            assert entries[0].flushed_file_offset == image.stat().st_size
    finally:
        layer.close()


@pytest.mark.interop
def test_a_flushed_but_unclosed_file_replays_everywhere(tmp_path):
    """A crash after a flush: the BAT may be in place or only in the log; our reader replays
    in memory, qemu-img replays on `check -r all`, a writable open replays into the file."""
    need("qemu-img")
    image = tmp_path / "d.vhdx"
    create_vhdx(image, 16 * MiB, block_size=MiB)
    layer = VhdxLayer(LocalFile(image, writable=True), writable=True)
    layer.write(3 * MiB, b"L" * MiB)
    layer.flush()
    crashed = tmp_path / "crashed.vhdx"
    shutil.copyfile(image, crashed)
    layer.close()
    # The BAT entry's place loses the update: only the log has it.
    entry_at = BAT_OFFSET + 8 * fmt.payload_index(3, fmt.chunk_ratio(MiB, 512))
    patch(crashed, entry_at, bytes(8))
    with open_chain(str(crashed)) as chain:
        assert any("not yet replayed" in w for w in chain.warnings)
        assert chain.read(3 * MiB, MiB) == b"L" * MiB
    model = tmp_path / "model.raw"
    model.write_bytes(bytes(3 * MiB) + b"L" * MiB + bytes(12 * MiB))
    copy = tmp_path / "qemu.vhdx"
    shutil.copyfile(crashed, copy)
    subprocess.run(["qemu-img", "check", "-r", "all", "-f", "vhdx", str(copy)], check=True,
                   capture_output=True)
    assert qemu_compare(copy, model).returncode == 0
    old = current(crashed)
    with open_chain(str(crashed), writable=True):
        replayed = headers(crashed)
    for header in replayed:  # a replay is no change to the disk's data
        assert header.log_guid == fmt.ZERO_GUID
        assert header.data_write_guid == old.data_write_guid
        assert header.file_write_guid != old.file_write_guid
    with open_chain(str(crashed)) as chain:
        assert chain.warnings == [] and chain.read(3 * MiB, MiB) == b"L" * MiB
    assert qemu_compare(crashed, model).returncode == 0


def test_a_log_left_by_another_writer_is_replayed_into_the_file_on_a_writable_open(tmp_path):
    vhdx = Vhdx(size=8 * MiB)
    vhdx.write(3 * MiB, b"L" * MiB)
    path = write_vhdx(tmp_path / "logged.vhdx", vhdx)
    with open(path, "rb") as f:
        f.seek(BAT_OFFSET)
        bat = f.read(fmt.LOG_SECTOR)
    vhdx.log_entries = [[LogWrite(BAT_OFFSET, bat)]]
    path = write_vhdx(path, vhdx)
    patch(path, BAT_OFFSET, bytes(fmt.LOG_SECTOR))  # the BAT in place: nothing allocated
    with open_chain(str(path), writable=True) as chain:
        assert chain.warnings == []
        assert chain.read(3 * MiB, MiB) == b"L" * MiB
    with open(path, "rb") as f:
        f.seek(BAT_OFFSET)
        assert f.read(fmt.LOG_SECTOR) == bat  # now in place
    assert current(path).log_guid == fmt.ZERO_GUID


def test_children_name_the_data_write_guid_and_go_stale_when_the_parent_is_written(tmp_path):
    base = tmp_path / "base.vhdx"
    create_vhdx(base, 8 * MiB, block_size=MiB)
    with open_chain(str(base)) as chain:
        create_vhdx_differencing(tmp_path / "child.avhdx", base, chain.top)
        parent_guid = chain.top.unique_id
    with open_chain(str(tmp_path / "child.avhdx")) as chain:
        assert chain.top.parent_ids == (parent_guid,)
        locator = chain.top.locator
        assert locator["parent_linkage"] == "{" + fmt.guid_text(parent_guid).lower() + "}"
        assert locator["relative_path"] == ".\\base.vhdx"
        assert locator["volume_path"] == str(base.resolve())
        assert locator["absolute_win32_path"] == str(base.resolve()).replace("/", "\\")
        assert chain.top.virtual_disk_id == chain.layers[1].virtual_disk_id
        assert chain.top.block_size == 2 * MiB  # Hyper-V's checkpoint block size
    with open_chain(str(base), writable=True) as chain:  # the parent's data changes ...
        chain.write(0, b"p" * 512)
    with pytest.raises(ParentMismatch):  # ... so the child no longer matches it
        open_chain(str(tmp_path / "child.avhdx"))


def test_a_session_that_writes_only_data_still_clears_a_stale_log_guid(tmp_path):
    """A fixed file needs no metadata change for a write, so its session never uses the
    log; a log GUID left in its header (with nothing to replay) is still cleared."""
    image = tmp_path / "f.vhdx"
    create_vhdx(image, 8 * MiB, fixed=True, block_size=MiB)
    raw = image.read_bytes()
    for at in fmt.HEADER_OFFSETS:
        header = fmt.HEADER.parse(raw[at:at + fmt.HEADER_SIZE]).tail.value
        fields = {k: header[k] for k in ("sequence_number", "file_write_guid", "data_write_guid",
                                         "log_version", "version", "log_length", "log_offset")}
        patch(image, at, fmt.build_header(dict(fields, log_guid=b"\x01" * 16)))
    with open_chain(str(image), writable=True) as chain:
        chain.write(4096, b"f" * 4096)
        assert current(image).log_guid == b"\x01" * 16  # no metadata: the log is not used
    assert [h.log_guid for h in headers(image)] == [fmt.ZERO_GUID, fmt.ZERO_GUID]
    with open_chain(str(image)) as chain:
        assert chain.read(4096, 4096) == b"f" * 4096
