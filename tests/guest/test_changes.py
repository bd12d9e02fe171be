"""vhdfs changes: the top layer's changed sectors mapped to guest files."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.content import make_png
from tests.guest.conftest import WELCOME, add_child
from vhdfs.guest.changes import Ranges
from vhdfs.resolve import OpenOptions, open_chain

WWWROOT = "/inetpub/wwwroot"


def changes_of(vhdfs, image) -> dict:
    result = vhdfs("changes", image, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    return data


def only_volume(data: dict) -> dict:
    assert [v["volume"] for v in data["volumes"]] == [2]
    assert data["outside_volumes"] == []
    return data["volumes"][0]


def test_update_of_welcome_png_changes_only_that_file(vhdfs, windows_chain):
    data = changes_of(vhdfs, windows_chain.folder / "child.vhd")
    volume = only_volume(data)
    files = [f for f in volume["files"] if f["kind"] != "dir"]
    assert [(f["path"], f["status"]) for f in files] == [("/" + WELCOME, "modified")]
    assert files[0]["what"]["data"] > 0  # the picture's clusters
    assert "MFT record" in files[0]["what"]  # its size and times
    # the only directory touched is the one whose index holds Welcome.png's entry
    assert {f["path"] for f in volume["files"] if f["kind"] == "dir"} <= {WWWROOT}
    assert all(m["path"].startswith("/$") for m in volume["metadata"])
    assert volume["unattributed_bytes"] == 0
    text = vhdfs("changes", windows_chain.folder / "child.vhd").out
    assert f"M  /{WELCOME}" in text
    assert "file-system metadata:" in text


def test_grandchild_changes_are_its_own(vhdfs, windows_chain):
    volume = only_volume(changes_of(vhdfs, windows_chain.folder / "grandchild.vhd"))
    assert [f["path"] for f in volume["files"] if f["kind"] == "file"] == ["/" + WELCOME]


def test_added_deleted_and_resident_files(vhdfs, chain_copy):
    """A new small file lives in its MFT record; a deleted file's record is freed."""
    add_child(chain_copy / "child.vhd", chain_copy / "next.vhd",
              {"inetpub/wwwroot/hello.txt": b"hello, world\r\n",
               "inetpub/wwwroot/iisstart.htm": None})
    volume = only_volume(changes_of(vhdfs, chain_copy / "next.vhd"))
    by_path = {f["path"]: f for f in volume["files"]}
    hello = by_path[f"{WWWROOT}/hello.txt"]
    assert hello["status"] == "added"
    assert list(hello["what"]) == ["MFT record"]  # resident: no clusters of its own
    gone = by_path[f"{WWWROOT}/iisstart.htm"]
    assert gone["status"] == "deleted"
    assert "/" + WELCOME not in by_path
    text = vhdfs("changes", chain_copy / "next.vhd").out
    assert f"A  {WWWROOT}/hello.txt" in text and f"D  {WWWROOT}/iisstart.htm" in text


def test_sectors_rewritten_with_the_same_bytes_are_no_change(vhdfs, chain_copy):
    assert vhdfs("-q", "create", chain_copy / "same.vhd", "--parent", chain_copy / "child.vhd"
                 ).code == 0
    with open_chain(str(chain_copy / "same.vhd"), OpenOptions(), writable=True) as chain:
        offset = 40 * 1024 * 1024
        chain.write(offset, chain.read(offset, 64 * 1024))
    data = changes_of(vhdfs, chain_copy / "same.vhd")
    assert data["written_bytes"] == 64 * 1024
    assert data["identical_bytes"] == 64 * 1024
    assert data["changed_bytes"] == 0 and data["volumes"] == []
    assert "no guest file changes" in vhdfs("changes", chain_copy / "same.vhd").out


def test_partition_table_change_is_outside_the_volumes(vhdfs, chain_copy):
    assert vhdfs("-q", "create", chain_copy / "mbr.vhd", "--parent", chain_copy / "child.vhd"
                 ).code == 0
    with open_chain(str(chain_copy / "mbr.vhd"), OpenOptions(), writable=True) as chain:
        sector = bytearray(chain.read(0, 512))
        sector[0x1B8:0x1BC] = (0x12345678).to_bytes(4, "little")  # a new disk signature
        chain.write(0, bytes(sector))
    data = changes_of(vhdfs, chain_copy / "mbr.vhd")
    assert data["volumes"] == []
    assert data["outside_volumes"] == [{"what": "partition table (MBR)", "offset": 0,
                                        "bytes": 512}]


def test_changes_needs_a_parent(vhdfs, windows_chain):
    result = vhdfs("changes", windows_chain.folder / "base.vhd")
    assert result.code == 2
    assert "has no parent" in result.err


def test_welcome_png_stays_readable_after_changes(vhdfs, chain_copy):
    new = make_png(40, 30, 9)
    add_child(chain_copy / "child.vhd", chain_copy / "n.vhd", {WELCOME: new})
    assert vhdfs("cat", chain_copy / "n.vhd", "/" + WELCOME).raw == new


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=12),
       st.integers(0, 240), st.integers(0, 60))
def test_ranges_overlaps_match_a_set_model(pieces, start, length):
    ranges = Ranges([(a, a + n) for a, n in pieces])
    model = {x for a, n in pieces for x in range(a, a + n)}
    assert ranges.total == len(model)
    got = {x for lo, hi in ranges.overlaps(start, start + length) for x in range(lo, hi)}
    assert got == {x for x in model if start <= x < start + length}
    assert ranges.overlap(start, start + length) == len(got)
    clipped = ranges.clip(start, start + length)
    assert {x for lo, hi in clipped for x in range(lo, hi)} == {x - start for x in got}
    assert all(hi < lo2 for (_, hi), (lo2, _) in zip(list(ranges), list(ranges)[1:], strict=False))
