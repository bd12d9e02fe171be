"""vhdfs check reads every parent locator's data: zeros (a writer that flushed stale metadata
over a fresh locator) or text a reader cannot decode is a finding, not "clean"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ops.conftest import KiB, MiB, cli, fill, flat, make_base, make_child
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.dynheader import DynamicHeader
from vhdfs.vhd.layer import Layer


def child_with_data(folder: Path) -> Path:
    base = make_base(folder / "base.vhd", "dynamic", 4 * MiB, 512 * KiB)
    fill(base, [(0, b"A" * 8192)])
    child = make_child(base, folder / "child.vhd")
    fill(child, [(4096, b"c" * 4096)])
    return child


def locator_area(path: Path, code: str) -> tuple[int, int]:
    """(data offset, data length) of the locator with this platform code."""
    with Layer(LocalFile(path)) as layer:
        header_at = layer.footer.data_offset
    with open(path, "rb") as handle:
        handle.seek(header_at)
        header = DynamicHeader.parse(handle.read(1024), str(path), header_at)
    loc = next(loc for loc in header.locators if loc.code_text == code)
    return loc.data_offset, loc.data_length


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def zeroed(length: int) -> bytes:
    return bytes(length)


def bad_utf16(length: int) -> bytes:
    # A lone high surrogate (D800) followed by "a": not UTF-16 text.
    return (b"\x00\xd8a\x00" * length)[:length]


def nul_inside_utf16(length: int) -> bytes:
    # The path's middle zeroed: a torn write of the locator.
    text = ".\\base.vhd".encode("utf-16-le")
    return (text[:4] + bytes(4) + text[8:] + bytes(length))[:length]


def bad_utf8(length: int) -> bytes:
    return (b"file:///tmp/\xff\xfe.vhd" + bytes(length))[:length]


def not_a_url(length: int) -> bytes:
    return (b"/tmp/base.vhd" + bytes(length))[:length]


@pytest.mark.parametrize(("code", "damage", "finding", "said"), [
    ("W2ru", zeroed, "locator-zeroed", "are all zeros"),
    ("W2ku", zeroed, "locator-zeroed", "are all zeros"),
    ("MacX", zeroed, "locator-zeroed", "are all zeros"),
    ("W2ku", bad_utf16, "locator-undecodable", "is not UTF-16 text"),
    ("W2ru", nul_inside_utf16, "locator-undecodable", "holds NUL or control characters"),
    ("MacX", bad_utf8, "locator-undecodable", "is not UTF-8 text"),
    ("MacX", not_a_url, "locator-undecodable", "is not a URL"),
])
def test_a_locator_that_names_nothing_is_a_finding(tmp_path, code, damage, finding, said):
    child = child_with_data(tmp_path)
    good = flat(child)
    assert cli("check", child).returncode == 0  # a fresh child is clean
    offset, length = locator_area(child, code)
    overwrite(child, offset, damage(length))

    report = cli("check", child, "--json")
    assert report.returncode == 4, report.stdout + report.stderr
    findings = [f for layer in json.loads(report.stdout)["layers"] for f in layer["findings"]]
    found = [f for f in findings if f["code"] == finding]
    assert len(found) == 1 and f"({code!r}" in found[0]["message"], findings
    assert said in found[0]["message"] and found[0]["severity"] == "error"
    text = cli("check", child)
    assert text.returncode == 4 and said in text.stdout and "clean (exit 0)" not in text.stdout

    # The other locators still find the parent; --repair clears the dead one, and the child
    # reads as before.
    assert flat(child) == good
    assert cli("check", child, "--repair").returncode == 1
    assert cli("check", child).returncode == 0
    assert flat(child) == good
    info = json.loads(cli("info", child, "--json").stdout)
    assert code not in {loc["code"] for loc in info["layers"][0]["locators"]}
