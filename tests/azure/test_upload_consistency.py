"""Uploads are of a consistent source, or fail (issue 11, item 2).

A source file changed while an upload reads it (the upload is paused by its test hook after
its first page write, the file is changed, the upload goes on) fails with exit 5 before the
blob is marked complete, and --resume starts over once the file is stable. A file of a
writable vhdfs mount is refused before anything is read, even with a writer busy on it; a
read-only mount's disk.vhd uploads and verifies.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.azure.azurite import Azurite
from tests.azure.helpers import MiB, flat_disk, make_chain, service, vhdfs
from tests.fuse.conftest import Mount
from vhdfs.sources.local import LocalFile
from vhdfs.upload.watch import ENV_PAUSE, RESTART, WatchedFiles

RAW_SIZE = 20 * MiB  # Azure's smallest disk; five 4 MiB page writes, the pause after the first


def blob_client(azurite: Azurite, container: str, name: str):  # noqa: ANN201
    return service(azurite.endpoint).get_blob_client(container, name)


def make_raw(path: Path, seed: int = 3) -> bytes:
    data = random.Random(seed).randbytes(RAW_SIZE)
    path.write_bytes(data)
    return data


# ---------------------------------------------------------------- changes made mid-upload
def _write_ahead(raw: Path) -> None:
    """New bytes where the upload has not read yet (a torn image if it went unnoticed)."""
    with open(raw, "r+b") as handle:
        handle.seek(16 * MiB)
        handle.write(b"\xee" * 4096)


def _chmod(raw: Path) -> None:
    """Only the ctime changes (contents, size and mtime stay)."""
    os.chmod(raw, 0o600)


def _replace(raw: Path) -> None:
    """Another file takes the name (the upload goes on reading the old one)."""
    other = raw.with_name("other.img")
    other.write_bytes(random.Random(9).randbytes(RAW_SIZE))
    os.replace(other, raw)


def _grow(raw: Path) -> None:
    with open(raw, "ab") as handle:
        handle.write(b"\x01" * MiB)


MUTATIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "write": (_write_ahead, "was modified (mtime "),
    "chmod": (_chmod, "was changed (ctime "),
    "replace": (_replace, "was replaced by another file"),
    "grow": (_grow, f"its size changed from {RAW_SIZE} to {RAW_SIZE + MiB} bytes"),
}


def paused_upload(args: list[str], env: dict[str, str], flag: Path,
                  during: Callable[[], None]) -> subprocess.CompletedProcess:
    """`vhdfs upload ARGS`, paused after its first page write while `during` runs."""
    proc = subprocess.Popen([sys.executable, "-m", "vhdfs", "upload", *args], text=True,
                            env={**env, ENV_PAUSE: str(flag)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        reached = Path(f"{flag}.reached")
        while not reached.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the upload never reached its pause"
            time.sleep(0.02)
        during()
        Path(f"{flag}.go").write_text("")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("mutation", "as_is"), [
    *(pytest.param(name, False, id=f"flat-{name}") for name in sorted(MUTATIONS)),
    # --as-is reads the file through another path: once is enough
    pytest.param("write", True, id="as-is-write"),
])
def test_a_source_changed_mid_upload_fails_and_resume_starts_over(
        tmp_path: Path, env: dict, azurite: Azurite, container: str, mutation: str,
        as_is: bool) -> None:
    raw = tmp_path / "disk.img"
    make_raw(raw)
    dest = f"az://{container}/disk.vhd"
    mode = ["--as-is"] if as_is else []
    change, said = MUTATIONS[mutation]

    done = paused_upload([str(raw), dest, *mode], env, tmp_path / "pause", lambda: change(raw))
    assert done.returncode == 5, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vhdfs: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith(f"vhdfs: error: {raw}: {said}"), errors[0]
    assert f"{dest} was not marked complete" in errors[0] and "--resume" in errors[0]
    meta = blob_client(azurite, container, "disk.vhd").get_blob_properties().metadata
    assert meta["vhdfs_state"] == "uploading" and meta["vhdfs_source_id"] == RESTART
    assert "vhdfs_digest" not in meta

    # Once the file is stable, --resume starts over and the blob holds the file as it is now.
    again = vhdfs("upload", raw, dest, *mode, "--resume", "--verify", env=env)
    assert "starting over" in again.stderr and "verified" in again.stdout
    meta = blob_client(azurite, container, "disk.vhd").get_blob_properties().metadata
    assert meta["vhdfs_state"] == "complete" and meta["vhdfs_source_id"] != RESTART
    blob = blob_client(azurite, container, "disk.vhd").download_blob().readall()
    now = raw.read_bytes()
    assert (blob if as_is else blob[:len(now)]) == now


def test_a_stable_source_passes_the_check(tmp_path: Path, env: dict, azurite: Azurite,
                                          container: str) -> None:
    """The same pause with nothing changed: the upload completes (the check is no false alarm)."""
    raw = tmp_path / "disk.img"
    data = make_raw(raw)
    done = paused_upload([str(raw), f"az://{container}/disk.vhd", "--verify"], env,
                         tmp_path / "pause", lambda: None)
    assert done.returncode == 0 and "verified" in done.stdout, done.stderr
    assert blob_client(azurite, container, "disk.vhd").download_blob().readall()[:RAW_SIZE] == data


# ---------------------------------------------------------------- the watch itself
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_watched_files_see_each_kind_of_change(tmp_path: Path, mutation: str) -> None:
    raw = tmp_path / "disk.img"
    make_raw(raw)
    watched = WatchedFiles.before_opening(str(raw))
    with LocalFile(raw) as source:
        watched.add_source(source)
        assert watched.changes() == ""
        source.read_at(0, 4096)  # reading changes nothing
        assert watched.changes() == ""
        change, said = MUTATIONS[mutation]
        change(raw)
        assert watched.changes().startswith(f"{raw}: {said}")


def test_a_change_between_looking_and_opening_is_seen(tmp_path: Path) -> None:
    raw = tmp_path / "disk.img"
    make_raw(raw)
    watched = WatchedFiles.before_opening(str(raw))
    _write_ahead(raw)  # after the first look, before the open: the open sees the new state
    with LocalFile(raw) as source:
        watched.add_source(source)
        assert watched.changes().startswith(f"{raw}: was modified")


# ---------------------------------------------------------------- files of a vhdfs mount
@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: FUSE mounts cannot run on this machine")
    started: list[Mount] = []

    def start(image: Path, *args: str) -> Mount:
        handle = Mount(image, tmp_path / f"mnt{len(started)}", "--foreground", *args)
        started.append(handle)
        return handle.start()

    yield start
    for handle in reversed(started):
        handle.cleanup()


def test_a_writable_mount_is_refused_while_its_writer_is_busy(
        tmp_path: Path, env: dict, azurite: Azurite, container: str, mounted) -> None:
    _, child = make_chain(tmp_path)
    mount = mounted(child, "--rw")
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        rng = random.Random(5)
        fd = os.open(mount.file("disk.raw"), os.O_WRONLY)
        try:
            while not stop.is_set():
                os.pwrite(fd, rng.randbytes(4096), rng.randrange(0, 60 * MiB, 4096))
                writes += 1
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while writes < 10:
            time.sleep(0.01)
        for name, mode in (("disk.vhd", []), ("disk.raw", ["--as-is"])):
            done = vhdfs("upload", mount.file(name), f"az://{container}/{name}", *mode, env=env,
                         check=False)
            assert done.returncode == 9, done.stderr
            line = done.stderr.strip()
            assert "\n" not in line and line.startswith(f"vhdfs: error: {mount.file(name)}: is "
                                                        "a file of the writable vhdfs mount "
                                                        f"{mount.mountpoint}"), line
            assert f"vhdfs umount {mount.mountpoint}" in line and "read-only" in line
            assert not blob_client(azurite, container, name).exists()
    finally:
        stop.set()
        thread.join()
    assert writes > 10


def test_a_read_only_mounts_disk_vhd_uploads_and_verifies(
        tmp_path: Path, env: dict, azurite: Azurite, container: str, mounted) -> None:
    _, child = make_chain(tmp_path)
    mount = mounted(child)
    disk_vhd = mount.file("disk.vhd")
    before = os.stat(disk_vhd)
    done = vhdfs("upload", disk_vhd, f"az://{container}/disk.vhd", "--verify", env=env)
    assert "verified" in done.stdout
    after = os.stat(disk_vhd)
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_size) == \
        (before.st_mtime_ns, before.st_ctime_ns, before.st_size)
    blob = blob_client(azurite, container, "disk.vhd").download_blob().readall()
    fixed = flat_disk(child, tmp_path / "flat.vhd", env)
    assert blob[:-512] == fixed[:-512]
    meta = blob_client(azurite, container, "disk.vhd").get_blob_properties().metadata
    assert meta["vhdfs_state"] == "complete"
