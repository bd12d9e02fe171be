"""Parent resolution: the order of the places looked at, Windows paths, identity checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhdfs.create import create_dynamic
from vhdfs.errors import ParentMismatch, ParentNotFound
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.vhd.build import ParentInfo, sparse_layout
from vhdfs.vhd.dynheader import PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU, DynamicHeader
from vhdfs.vhd.footer import DiskType

MIB = 1 << 20


def make_parent(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    return create_dynamic(path, 4 * MIB).unique_id


def make_child(path: Path, parent_id: bytes, name: str, locators: list[tuple[bytes, str]]) -> None:
    """A differencing disk with exactly these locators and parent name (as Windows writes)."""
    encoded = [(code, text.encode("utf-8" if code == PLATFORM_MACX else "utf-16-le"))
               for code, text in locators]
    info = ParentInfo(path=Path(name), unique_id=parent_id, size=4 * MIB, timestamp=0)
    footer, header, placed, footer_at = sparse_layout(4 * MIB, 2 * MIB, DiskType.DIFFERENCING,
                                                     info, encoded)
    header.parent_name_raw = DynamicHeader.encode_parent_name(name)
    with open(path, "wb") as out:
        out.write(footer.build() + header.build())
        for offset, data in placed:
            out.seek(offset)
            out.write(data)
        out.seek(header.table_offset)
        out.write(b"\xff" * (footer_at - header.table_offset))
        out.write(footer.build())


def test_new_child_locators_are_windows_style_with_space_in_bytes(tmp_path):
    from vhdfs.create import create_differencing, parent_info_of

    (tmp_path / "lib").mkdir()
    base = tmp_path / "lib" / "base.vhd"
    make_parent(base)
    with open_chain(str(base)) as chain:
        info = parent_info_of(base, chain.top)
    (tmp_path / "work").mkdir()
    child = tmp_path / "work" / "child.vhd"
    create_differencing(child, info)
    with open_chain(str(child)) as chain:
        top = chain.top
        texts = {e.code: e.text for e in top.locator_entries}
        assert texts["W2ru"] == "..\\lib\\base.vhd"
        assert texts["W2ku"] == str(base)
        assert texts["MacX"] == "file://" + str(base)
        for loc in top.header.locators[:3]:
            # bytes, as Windows writes them: a multiple of 512 that holds the data
            assert loc.data_space % 512 == 0 and loc.data_space >= loc.data_length
        assert chain.links[0].found_by == "W2ru"
        assert chain.links[0].path == str(tmp_path / "work" / ".." / "lib" / "base.vhd")


def test_windows_absolute_locator_maps_to_file_next_to_child(tmp_path):
    parent_id = make_parent(tmp_path / "parent.vhd")
    make_child(tmp_path / "child.vhd", parent_id, "C:\\VMs\\parent.vhd",
               [(PLATFORM_W2KU, "C:\\VMs\\parent.vhd")])
    with open_chain(str(tmp_path / "child.vhd")) as chain:
        assert len(chain.layers) == 2
        assert chain.links[0].found_by == "W2ku"


def test_relative_locator_wins_over_absolute_and_name(tmp_path):
    parent_id = make_parent(tmp_path / "sub" / "p.vhd")
    make_child(tmp_path / "child.vhd", parent_id, "D:\\other\\p.vhd",
               [(PLATFORM_W2KU, "D:\\other\\p.vhd"), (PLATFORM_W2RU, ".\\sub\\p.vhd")])
    with open_chain(str(tmp_path / "child.vhd")) as chain:
        assert chain.links[0].found_by == "W2ru"
        assert Path(chain.links[0].path) == tmp_path / "sub" / "p.vhd"


def test_identity_picks_the_right_candidate_and_names_the_wrong_one(tmp_path):
    right = make_parent(tmp_path / "right" / "p.vhd")
    make_parent(tmp_path / "p.vhd")  # same name next to the child, other identity
    make_child(tmp_path / "child.vhd", right, "p.vhd", [(PLATFORM_W2RU, ".\\p.vhd")])
    with pytest.raises(ParentMismatch, match="has unique id"):
        open_chain(str(tmp_path / "child.vhd"))
    opts = OpenOptions(search=[str(tmp_path / "right")])
    with pytest.raises(ParentMismatch):  # the wrong file comes first and is a mismatch...
        open_chain(str(tmp_path / "child.vhd"), OpenOptions())
    with open_chain(str(tmp_path / "child.vhd"), opts) as chain:  # ...unless --search finds the right one
        assert Path(chain.links[0].path) == tmp_path / "right" / "p.vhd"
        assert chain.links[0].found_by == "--search"


def test_parent_override_and_not_found_message(tmp_path):
    parent_id = make_parent(tmp_path / "elsewhere" / "renamed.vhd")
    make_child(tmp_path / "child.vhd", parent_id, "C:\\x\\orig.vhd",
               [(PLATFORM_W2RU, ".\\orig.vhd"), (PLATFORM_MACX, "file:///srv/img/orig.vhd")])
    with pytest.raises(ParentNotFound) as caught:
        open_chain(str(tmp_path / "child.vhd"))
    message = str(caught.value)
    assert str(tmp_path / "orig.vhd") in message and "/srv/img/orig.vhd" in message
    assert "--parent" in message and "set-parent" in message
    opts = OpenOptions(parents=[str(tmp_path / "elsewhere" / "renamed.vhd")])
    with open_chain(str(tmp_path / "child.vhd"), opts) as chain:
        assert chain.links[0].found_by == "--parent"
