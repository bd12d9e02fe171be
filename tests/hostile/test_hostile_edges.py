"""Hostile input at the edges the corpus cannot see from its exit codes alone: URLs in
locators are never fetched (a real listener counts connections), damaged images are refused
by `vhdfs mount --rw` (and mounted read-only with the warning), and a FIFO given as the image
or as --parent never blocks a real process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import hostile, vhdimages

VHDFS = [sys.executable, "-m", "vhdfs"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*VHDFS, *args], capture_output=True, text=True, timeout=timeout)


def test_url_locators_are_never_fetched(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        built = hostile.url_locators(tmp_path, port)
        done = run("info", str(built.image))
        assert done.returncode == 4, done.stderr
        # A blob URL is followed only on the account the environment holds a credential for
        # (vhdfs create --parent az://...): here there is none.
        assert "only fetched on the account" in done.stderr
        done = run("check", str(built.image))
        assert done.returncode == 4, done.stdout + done.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_a_fifo_image_or_parent_never_blocks_a_process(tmp_path: Path) -> None:
    built = hostile.case_by_name("user-parent-is-fifo").build(tmp_path)
    fifo = Path(built.args[1])
    for args in (["info", str(fifo)], ["info", str(built.image), *built.args],
                 ["check", str(fifo)], ["convert", str(fifo), str(tmp_path / "x.raw"), "--to", "raw"],
                 ["create", str(tmp_path / "c.vhd"), "--parent", str(fifo)]):
        done = run(*args, timeout=30)  # a blocking open would hang until the timeout
        assert done.returncode in (2, 4, 8), (args, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["footer-bad-checksum", "header-bad-checksum", "footer-copy-differs",
                                  "footer-bad-cookie-trailing", "bat-entries-shared"])
def test_mount_rw_refuses_a_damaged_image_and_ro_mounts_it(name: str, tmp_path: Path, mounts) -> None:
    case = hostile.case_by_name(name)
    folder = tmp_path / "case"
    folder.mkdir()
    built = case.build(folder)
    before = built.image.read_bytes()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = run("mount", str(built.image), str(mountpoint), "--rw", "--foreground", timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vhdfs: error:")]
    assert len(errors) == 1 and str(built.image) in errors[0], done.stderr
    assert not os.path.ismount(mountpoint)
    assert built.image.read_bytes() == before
    # Read-only, the same image mounts (with the warning) and reads.
    mount = mounts.vhdfs(built.image, mountpoint)
    assert "vhdfs: warning:" in mount.stderr or "warning" in mount.log.read_text()
    disk = mountpoint / "disk.raw"
    with open(disk, "rb") as handle:
        for offset, data in built.expect:
            handle.seek(offset)
            assert handle.read(len(data)) == data
    mount.stop()
    assert built.image.read_bytes() == before


def test_info_output_has_no_control_characters(tmp_path: Path) -> None:
    """Locator text reaches stdout too (`vhdfs info` lists the locators): sanitised there."""
    built = hostile.case_by_name("locator-control-characters").build(tmp_path)
    done = run("info", str(built.image), "--parent", str(tmp_path / "base.vhd"))
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "locator" in done.stdout and "\ufffd" in done.stdout
    assert not [c for c in out if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) < 0xA0], repr(out)



def test_extent_cache_is_bounded_by_the_extents_it_holds(tmp_path: Path, monkeypatch) -> None:
    """Bitmaps that alternate set and clear sectors make one extent per sector: the chain's
    cache keeps at most EXTENT_CACHE_EXTENTS of them (not 4096 units of any size), and what
    it evicts reads the same when resolved again."""
    from vhdfs import chain as chain_module
    from vhdfs.resolve import open_chain

    base = vhdimages.make_dynamic(tmp_path / "base.vhd", writes=((0, vhdimages.DISK_SIZE),))
    child = vhdimages.make_child(tmp_path / "child.vhd", base,
                               writes=tuple((i * vhdimages.BLOCK_SIZE, 512) for i in range(8)))
    for entry in vhdimages.bat_entries(child):
        vhdimages.patch(child, entry * 512, b"\xaa" * (vhdimages.BLOCK_SIZE // 512 // 8))
    with open_chain(str(child)) as chain:
        reference = chain.read(0, chain.size)
        extents = sum(1 for _ in chain.iter_extents())
    assert extents == vhdimages.DISK_SIZE // 512  # one per sector
    monkeypatch.setattr(chain_module, "EXTENT_CACHE_EXTENTS", 2500)
    with open_chain(str(child)) as chain:
        assert sum(1 for _ in chain.iter_extents()) == extents
        assert 0 < chain._cached_extents <= 2500
        assert chain.read(0, chain.size) == reference  # evicted units resolve again, the same
        assert chain._cached_extents <= 2500
