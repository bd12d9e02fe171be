"""--json on every command: one JSON object on standard output with the keys README documents,
from real small images (upload: tests/azure/test_cli_json.py; mount and umount:
tests/fuse/test_cli_json.py). Also `get ... -` and `ls` without a path on a two-volume disk."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.cli.conftest import EXT_FILES, FAT_FILES, GuestDisk
from tests.cli.test_conventions import COMMANDS
from tests.fixtures.vhdimages import make_child, make_dynamic

TESTS = Path(__file__).resolve().parents[1]
ELSEWHERE = {"upload": TESTS / "azure" / "test_cli_json.py",
             "mount": TESTS / "fuse" / "test_cli_json.py",
             "umount": TESTS / "fuse" / "test_cli_json.py",
             "put": TESTS / "guest" / "write" / "test_put.py",
             "rm": TESTS / "guest" / "write" / "test_rm_mkdir.py",
             "mkdir": TESTS / "guest" / "write" / "test_rm_mkdir.py"}

#: The keys of each command's --json result (README, "Commands"; the warnings logged while
#: the command ran are part of every result object new with this convention).
KEYS = {
    "create": {"output", "format", "kind", "virtual_size", "block_size", "logical_sector_size",
               "unique_id", "virtual_disk_id", "parent", "seconds", "warnings"},
    "convert": {"source", "chain", "output", "format", "kind", "virtual_size", "file_size",
                "data_read", "data_written", "skipped_free", "free_space", "seconds",
                "warnings"},
    "commit": {"child", "parent", "found_by", "bytes_copied", "runs", "blocks", "resumed_at",
               "other_children", "searched", "child_deleted", "seconds", "warnings"},
    "set-parent": {"child", "parent", "parent_unique_id", "forced", "old_name", "new_name",
                   "old_locators", "locators", "metadata", "seconds", "warnings"},
    "get": {"image", "volume", "path", "dest", "files", "bytes", "skipped", "seconds",
            "warnings"},
    "resize": {"image", "format", "kind", "old_size", "new_size", "old_file_size",
               "new_file_size", "table_entries", "moved_blocks", "cut", "partition_table",
               "parent", "children", "finished_interrupted", "next_steps", "seconds",
               "warnings"},
    "info": {"virtual_size", "layers"},
    "check": {"image", "status", "exit_code", "repair", "dry_run", "layers"},
    "volumes": {"size", "scheme", "disk_signature", "disk_guid", "volumes", "warnings"},
    "ls": {"volume", "path", "entries"},
    "changes": {"top", "parent", "written_bytes", "identical_bytes", "changed_bytes", "volumes",
                "outside_volumes"},
    "inspect": {"image", "size", "partition_table", "operating_systems"},
    "verify": {"image", "passed", "profile", "findings", "inspection"},
}


def test_every_command_has_a_json_test():
    """A new command fails here until its --json result is tested (and documented)."""
    tested = set(KEYS) | {"cat"} | set(ELSEWHERE)
    assert tested == set(COMMANDS)
    for command, where in ELSEWHERE.items():
        assert f'"{command}"' in where.read_text() and "--json" in where.read_text()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("argv", "format_", "kind"), [
    (["--size", "8M"], "vhd", "dynamic"),
    (["--size", "8M", "--fixed"], "vhd", "fixed"),
    (["--size", "64M"], "vhdx", "dynamic"),
])
def test_create(vhdfs, tmp_path, argv, format_, kind):
    out = tmp_path / f"new.{format_}"
    done = vhdfs("create", out, *argv, "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["create"]
    assert (result["output"], result["format"], result["kind"]) == (str(out), format_, kind)
    info = vhdfs("info", out, "--json").json()["layers"][0]
    assert result["virtual_size"] == info["virtual_size"]
    assert result["block_size"] == (info["block_size"] or None)
    if format_ == "vhd":
        assert result["unique_id"] == info["unique_id"] and result["virtual_disk_id"] is None
    else:
        assert result["unique_id"] is None and result["virtual_disk_id"]
    assert result["parent"] is None and result["warnings"] == []


@pytest.mark.parametrize("format_", ["vhd", "vhdx"])
def test_create_a_child(vhdfs, tmp_path, format_):
    base, child = tmp_path / f"base.{format_}", tmp_path / f"child.a{format_}"
    assert vhdfs("create", base, "--size", "64M").code == 0
    result = vhdfs("create", child, "--parent", base, "-q", "--json").json()
    assert set(result) == KEYS["create"] and result["kind"] == "differencing"
    assert set(result["parent"]) == {"name", "path", "url", "unique_id"}
    layers = vhdfs("info", child, "--json").json()["layers"]
    assert result["parent"]["name"] == base.name
    assert result["parent"]["unique_id"].strip("{}").lower() == \
        layers[1]["unique_id"].strip("{}").lower()
    assert result["block_size"] == layers[0]["block_size"]


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    make_dynamic(tmp_path / "base.vhd")
    return make_child(tmp_path / "child.vhd", tmp_path / "base.vhd")


@pytest.mark.parametrize(("to", "format_", "kind"), [("raw", "raw", "raw"),
                                                      ("fixed", "vhd", "fixed"),
                                                      ("dynamic", "vhd", "dynamic"),
                                                      ("vhdx", "vhdx", "dynamic")])
def test_convert(vhdfs, chain, tmp_path, to, format_, kind):
    out = tmp_path / f"out.{format_}"
    done = vhdfs("convert", chain, out, "--to", to, "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["convert"]
    assert result["chain"] == [str(chain), str(tmp_path / "base.vhd")]
    assert (result["output"], result["format"], result["kind"]) == (str(out), format_, kind)
    assert result["virtual_size"] == 4 << 20 and result["file_size"] == out.stat().st_size
    # Read: at least the base's two runs (the child's lies inside the first), in windows.
    assert 64 * 1024 + 4096 <= result["data_read"] <= 4 << 20
    assert result["data_written"] > 0 and result["seconds"] >= 0
    assert (result["skipped_free"], result["free_space"]) == (0, None)  # without --skip-free


def test_commit(vhdfs, chain, tmp_path):
    done = vhdfs("commit", chain, "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["commit"]
    assert (result["child"], result["parent"]) == (str(chain), str(tmp_path / "base.vhd"))
    assert (result["bytes_copied"], result["runs"], result["child_deleted"]) == (1536, 1, False)
    # The warning about the parent's other children: on stderr, and in the result.
    assert any("any other child of it becomes invalid" in w for w in result["warnings"])
    assert "vhdfs: warning: " in done.err


def test_set_parent(vhdfs, chain, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "base.vhd", moved / "base.vhd")
    done = vhdfs("set-parent", chain, moved / "base.vhd", "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["set-parent"]
    assert result["new_name"] == "base.vhd" and result["metadata"] is None
    assert {loc["code"] for loc in result["locators"]} == {"W2ru", "W2ku", "MacX"}
    assert any(loc["path"] == str(moved / "base.vhd") for loc in result["locators"])
    assert vhdfs("info", chain).code == 0  # found again


def test_resize(vhdfs, chain, tmp_path):
    base = tmp_path / "base.vhd"
    done = vhdfs("resize", base, "8M", "--force", "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["resize"]
    assert (result["old_size"], result["new_size"], result["kind"]) == (4 << 20, 8 << 20, "dynamic")
    assert result["children"] == [str(chain)] and result["cut"] == 0
    assert result["new_file_size"] == base.stat().st_size
    assert any("child.vhd" in w for w in result["warnings"])  # its child must follow
    result = vhdfs("resize", chain, "8M", "--json").json()
    assert set(result) == KEYS["resize"]
    assert (result["kind"], result["parent"]) == ("differencing", str(base))


def test_info_and_check(vhdfs, chain):
    for command in ("info", "check"):
        done = vhdfs(command, chain, "--json")
        assert done.code == 0, done.err
        assert set(done.json()) == KEYS[command]


# ---------------------------------------------------------------- guest tools
def test_volumes(vhdfs, guest_disk: GuestDisk):
    result = vhdfs("volumes", guest_disk.child, "--json").json()
    assert set(result) == KEYS["volumes"]
    assert [(v["number"], v["file_system"]) for v in result["volumes"]] == [(1, "FAT32"),
                                                                            (2, "ext4")]


def test_ls_with_a_path(vhdfs, guest_disk: GuestDisk):
    result = vhdfs("ls", guest_disk.child, "/etc", "--json").json()
    assert set(result) == KEYS["ls"] and result["volume"] == 2
    assert [e["name"] for e in result["entries"]] == ["hostname"]


def test_ls_without_a_path_lists_each_volume_root(vhdfs, guest_disk: GuestDisk):
    done = vhdfs("ls", guest_disk.child)
    assert done.code == 0, done.err
    text = done.out.split("\n\n")
    assert len(text) == 2
    fat, ext = (block.splitlines() for block in text)
    assert fat[0] == 'volume 1 (FAT32 "DATA"):' and {"README.TXT", "DOCS/"} <= set(fat[1:])
    assert ext[0] == 'volume 2 (ext4 "linux"):' and {"etc/", "srv/"} <= set(ext[1:])
    result = vhdfs("ls", guest_disk.child, "--json").json()
    assert set(result) == {"path", "volumes"} and result["path"] == "/"
    assert [v["volume"] for v in result["volumes"]] == [1, 2]
    assert {e["name"] for e in result["volumes"][1]["entries"]} >= {"etc", "srv"}
    # A volume named, or a path given: one listing as before.
    one = vhdfs("ls", guest_disk.child, "--volume", "1", "--json").json()
    assert one["volume"] == 1 and "README.TXT" in {e["name"] for e in one["entries"]}
    explicit_root = vhdfs("ls", guest_disk.child, "/")
    assert explicit_root.code == 2 and "--volume" in explicit_root.err


def test_get_to_stdout_is_the_file_get_writes(vhdfs, guest_disk: GuestDisk, tmp_path):
    for guest, data in (("/DOCS/BIG.BIN", FAT_FILES["DOCS/BIG.BIN"]),
                        ("/srv/data.bin", EXT_FILES["srv/data.bin"])):
        to_file = vhdfs("get", guest_disk.child, guest, tmp_path / "copy.bin", "--force")
        assert to_file.code == 0, to_file.err
        to_stdout = vhdfs("get", guest_disk.child, guest, "-")
        assert to_stdout.code == 0 and to_stdout.err == ""
        assert to_stdout.raw == (tmp_path / "copy.bin").read_bytes() == data
    assert not (Path.cwd() / "-").exists()


def test_get_a_folder_to_stdout_is_refused(vhdfs, guest_disk: GuestDisk):
    done = vhdfs("get", guest_disk.child, "/srv", "-")
    assert done.code == 2 and done.raw == b""
    (line,) = done.err_lines()
    assert "/srv: is a directory on volume 2" in line and "give a folder as DEST" in line
    refused = vhdfs("get", guest_disk.child, "/etc/hostname", "-", "--json")
    assert refused.code == 2 and set(refused.json()) == {"error"}


def test_get(vhdfs, guest_disk: GuestDisk, tmp_path):
    done = vhdfs("get", guest_disk.child, "/DOCS", tmp_path, "--json")
    assert done.code == 0, done.err
    result = done.json()
    assert set(result) == KEYS["get"]
    assert (result["volume"], result["path"], result["dest"]) == (1, "/DOCS",
                                                                  str(tmp_path / "DOCS"))
    assert result["files"] == [{"path": "/DOCS/BIG.BIN", "dest": str(tmp_path / "DOCS/BIG.BIN"),
                                "bytes": len(FAT_FILES["DOCS/BIG.BIN"])}]
    assert result["bytes"] == len(FAT_FILES["DOCS/BIG.BIN"]) and result["skipped"] == []


def test_cat_refuses_json_and_writes_the_bytes_without_it(vhdfs, guest_disk: GuestDisk):
    refused = vhdfs("cat", guest_disk.child, "/README.TXT", "--json")
    assert refused.code == 2 and set(refused.json()) == {"error"}
    assert vhdfs("cat", guest_disk.child, "/README.TXT").raw == FAT_FILES["README.TXT"]


@pytest.mark.parametrize("command", ["changes", "inspect", "verify"])
def test_guest_reports(vhdfs, guest_disk: GuestDisk, command):
    done = vhdfs(command, guest_disk.child, "--json")
    # inspect and verify answer "no" (exit 1): no operating system on this disk
    assert done.code == (0 if command == "changes" else 1), done.err
    assert set(done.json()) == KEYS[command]
