"""Guest names that are hostile to a terminal (escape sequences, newlines that fake a line of
the report) or not UTF-8 at all, on a real ext4 file system built by mkfs.ext4 and changed by
debugfs: listings escape them as `ls -b` does, --json keeps them exactly, and cat, get and
changes work on them. `get` is all or nothing, and never follows a link in its way."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.ntfsedit import write_differences
from tests.tooling import need
from vhdfs.cli import main
from vhdfs.resolve import OpenOptions, open_chain

MiB = 1024 * 1024
FAKE_LINE = b"evil\nA  fake.dll  data 4 KiB"  # a newline that fakes a line of `changes`
RED = b"red\x1b[31mALERT\x1b[0m.txt"  # a terminal escape sequence
LATIN1 = b"caf\xe9.txt"  # not UTF-8 (Latin-1)
BACKSLASH = b"back\\slash.txt"
RAW_DIR = b"d\xff"
INNER = b"inner\xfe.bin"
LABEL = b"V\x1b[2Jx"  # clears the screen, if it ever reached a terminal
ADDED = b"new\xff\x1b[1m.bin"  # added by the child: not UTF-8 and an escape
RNG = random.Random(11)
CONTENT = {
    FAKE_LINE: RNG.randbytes(8192),
    RED: b"red file\n",
    LATIN1: b"latin-1 name\n",
    BACKSLASH: b"one backslash\n",
    RAW_DIR + b"/" + INNER: RNG.randbytes(5000),
    b"a.txt": b"first\n",
    b"z.bin": RNG.randbytes(256 * 1024),
}


def shown(name: bytes) -> str:
    """A name as a Python str (argv and --json carry it so: surrogateescape)."""
    return os.fsdecode(name)


def build_ext4(raw: Path, files: dict[bytes, bytes], label: bytes) -> None:
    """An ext4 file system over the whole of `raw` holding `files`, names exactly as given."""
    need("mkfs.ext4")
    staging = os.fsencode(raw.with_suffix(".src"))
    os.mkdir(staging)
    for rel, data in files.items():
        path = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)
    with open(raw, "wb") as out:
        out.truncate(32 * MiB)
    subprocess.run([b"mkfs.ext4", b"-q", b"-F", b"-t", b"ext4", b"-b", b"4096", b"-L", label,
                    b"-E", b"root_owner=0:0", b"-d", staging, os.fsencode(raw)],
                   check=True, capture_output=True)
    shutil.rmtree(staging)


@pytest.fixture(scope="module")
def names_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("names") / "names.raw"
    build_ext4(raw, CONTENT, LABEL)
    return raw


def has_control(data: bytes) -> bool:
    """A terminal control character (other than the line ends) in printed output."""
    return any(b < 0x20 and b not in b"\n" or b == 0x7F for b in data)


def test_ls_escapes_names_and_json_keeps_them(vhdfs, names_raw):
    listing = vhdfs("ls", names_raw, "/")
    assert listing.code == 0, listing.err
    assert not has_control(listing.raw)
    lines = listing.out.splitlines()
    assert "evil\\nA  fake.dll  data 4 KiB" in lines  # one line, not two
    assert "red\\033[31mALERT\\033[0m.txt" in lines
    assert "caf\\351.txt" in lines and "back\\\\slash.txt" in lines and "d\\377/" in lines
    assert len(lines) == 8  # the 7 entries and lost+found/, nothing faked
    long = vhdfs("ls", names_raw, "/", "-l")
    assert long.code == 0 and not has_control(long.raw)
    assert len(long.out.splitlines()) == 8
    assert any(line.endswith("  evil\\nA  fake.dll  data 4 KiB") and
               line.startswith("file") for line in long.out.splitlines())

    data = json.loads(vhdfs("ls", names_raw, "/", "--json").out)
    names = {entry["name"] for entry in data["entries"]}
    assert {shown(n) for n in (FAKE_LINE, RED, LATIN1, BACKSLASH, RAW_DIR)} <= names
    inside = json.loads(vhdfs("ls", names_raw, shown(RAW_DIR), "--json").out)
    assert [e["name"] for e in inside["entries"]] == [shown(INNER)]


def test_volumes_and_verify_escape_the_label(vhdfs, names_raw):
    table = vhdfs("volumes", names_raw)
    assert table.code == 0, table.err
    assert not has_control(table.raw) and "V\\033[2Jx" in table.out
    assert json.loads(vhdfs("volumes", names_raw, "--json").out)["volumes"][0]["label"] == \
        shown(LABEL)
    report = vhdfs("verify", names_raw)
    assert report.code == 1  # no agent, nothing boots: but no escape reaches the terminal
    assert not has_control(report.raw) and 'ext4 "V\\033[2Jx"' in report.out


def test_info_escapes_host_paths(vhdfs, tmp_path):
    folder = tmp_path / "disks\n\x1b[2J"
    folder.mkdir()
    assert vhdfs("create", folder / "base.vhd", "--size", "4M").code == 0
    assert vhdfs("create", folder / "child.vhd", "--parent", folder / "base.vhd").code == 0
    info = vhdfs("info", folder / "child.vhd")
    assert info.code == 0, info.err
    assert not has_control(info.raw)
    assert f"[0] {tmp_path}/disks\\n\\033[2J/child.vhd (top)" in info.out.splitlines()
    data = json.loads(vhdfs("info", folder / "child.vhd", "--json").out)
    assert data["layers"][0]["path"] == str(folder / "child.vhd")


def test_cat_and_get_read_names_that_are_not_utf8(vhdfs, names_raw, tmp_path):
    inner = "/" + shown(RAW_DIR + b"/" + INNER)
    cat = vhdfs("cat", names_raw, inner)
    assert cat.code == 0, cat.err
    assert cat.raw == CONTENT[RAW_DIR + b"/" + INNER]
    assert vhdfs("cat", names_raw, "/" + shown(LATIN1)).raw == CONTENT[LATIN1]

    got = vhdfs("get", names_raw, "/", tmp_path / "out")
    assert got.code == 0, got.err
    assert not has_control(got.raw)
    out = os.fsencode(tmp_path / "out")
    for rel, data in CONTENT.items():  # every name byte for byte, every file whole
        with open(os.path.join(out, rel), "rb") as handle:
            assert handle.read() == data, rel
    assert sorted(os.listdir(os.path.join(out, RAW_DIR))) == [INNER]


def test_changes_escapes_paths_and_names_what_is_not_utf8(vhdfs, names_raw, tmp_path):
    need("debugfs")
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    assert main(["-q", "convert", str(names_raw), str(base), "--to", "dynamic"]) == 0
    assert main(["-q", "create", str(child), "--parent", str(base)]) == 0
    after = tmp_path / "after.raw"
    shutil.copyfile(names_raw, after)
    image = bytearray(after.read_bytes())
    at = image.find(CONTENT[FAKE_LINE][:4096])
    image[at:at + 4] = b"EDIT"  # the file with the newline in its name is modified
    after.write_bytes(bytes(image))
    source = tmp_path / "added.bin"
    source.write_bytes(b"added by the child\n")
    subprocess.run([b"debugfs", b"-w", b"-R",
                    b"write " + os.fsencode(source) + b" " + ADDED, os.fsencode(after)],
                   check=True, capture_output=True)
    with open_chain(str(child), OpenOptions(), writable=True) as chain:
        assert write_differences(chain, 0, names_raw, after) > 0

    report = vhdfs("changes", child)
    assert report.code == 0, report.err
    assert not has_control(report.raw)
    lines = [line.strip() for line in report.out.splitlines()]
    assert any(line.startswith("M  /evil\\nA  fake.dll  data 4 KiB") for line in lines)
    assert any(line.startswith("A  /new\\377\\033[1m.bin") for line in lines)
    assert not any(line.startswith("A  fake.dll") for line in lines)  # no faked line
    assert 'volume 1 (ext4 "V\\033[2Jx")' in report.out

    data = json.loads(vhdfs("changes", child, "--json").out)
    files = {(f["path"], f["status"]) for f in data["volumes"][0]["files"]}
    assert ("/" + shown(FAKE_LINE), "modified") in files
    assert ("/" + shown(ADDED), "added") in files


def test_get_never_follows_a_link_in_its_way(vhdfs, names_raw, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    os.symlink(elsewhere / "file", os.path.join(os.fsencode(dest), LATIN1))  # dangling
    os.symlink(elsewhere / "dir", os.path.join(os.fsencode(dest), RAW_DIR))  # dangling

    for path, name in (("/" + shown(LATIN1), LATIN1), ("/" + shown(RAW_DIR), RAW_DIR)):
        refused = vhdfs("get", names_raw, path, dest)
        assert refused.code == 6, refused.err
        assert refused.err.count("\n") == 1 and "--force" in refused.err
        assert "nothing was copied" in refused.err and "link" in refused.err
        assert os.path.islink(os.path.join(os.fsencode(dest), name))
        assert not elsewhere.exists()  # the link was not followed

        replaced = vhdfs("get", names_raw, path, dest, "--force")
        assert replaced.code == 0, replaced.err
        target = os.path.join(os.fsencode(dest), name)
        assert not os.path.islink(target) and not elsewhere.exists()
    with open(os.path.join(os.fsencode(dest), LATIN1), "rb") as handle:
        assert handle.read() == CONTENT[LATIN1]
    with open(os.path.join(os.fsencode(dest), RAW_DIR, INNER), "rb") as handle:
        assert handle.read() == CONTENT[RAW_DIR + b"/" + INNER]
    # A folder is never replaced by a file, even with --force.
    os.mkdir(os.path.join(os.fsencode(dest), b"a.txt"))
    kept = vhdfs("get", names_raw, "/a.txt", dest, "--force")
    assert kept.code == 6 and "is a folder" in kept.err


def test_get_is_all_or_nothing(vhdfs, names_raw, tmp_path):
    """A read failure in the middle of a copy (z.bin's block is damaged; a.txt, copied
    before it, is fine) leaves no DEST and no staging folder behind, and says so."""
    image = tmp_path / "damaged.vhd"
    assert main(["-q", "convert", str(names_raw), str(image), "--to", "dynamic",
                 "--block-size", "4K"]) == 0
    # A block well inside z.bin: TSK reads ahead in 64 KiB pieces, which must not reach it
    # while a.txt is read.
    block = names_raw.read_bytes().find(CONTENT[b"z.bin"][192 * 1024:196 * 1024]) // 4096
    with open(image, "r+b") as handle:
        handle.seek(512 + 16)  # the dynamic header's BAT offset
        bat = int.from_bytes(handle.read(8), "big")
        handle.seek(bat + 4 * block)
        handle.write((0x7FFFFFF0).to_bytes(4, "big"))  # far past the end of the file
    first = vhdfs("cat", image, "/a.txt")
    assert first.raw == CONTENT[b"a.txt"], first.err

    failed = vhdfs("get", image, "/", tmp_path / "out")
    assert failed.code not in (0, 70), failed.err
    errors = [line for line in failed.err.splitlines() if line.startswith("vhdfs: error:")]
    assert len(errors) == 1 and errors[0].endswith(f"nothing was written to {tmp_path}/out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.vhd"]  # no staging left
