"""`mount` and `umount` with --json (the one-object convention of tests/cli/test_json_results.py),
through real mounts: in the background and in the foreground."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.fuse.conftest import PROJECT_ROOT, TIMEOUT, flat_reference, make_chain, vhdfs
from tests.tooling import force_unmount

MOUNT_KEYS = {"image", "chain", "mountpoint", "mode", "files", "pid", "foreground", "warnings"}
UMOUNT_KEYS = {"mountpoint", "lazy", "seconds", "stats", "warnings"}


def test_mount_and_umount_in_the_background_print_one_object_each(tmp_path):
    layers = make_chain(tmp_path / "chain", 2)
    top = layers[-1]
    flat = flat_reference(top, tmp_path / "flat.raw")
    point = tmp_path / "mnt"
    point.mkdir()
    try:
        done = vhdfs("mount", top, point, "--json", "-q")
        result = json.loads(done.stdout)
        assert set(result) == MOUNT_KEYS
        assert result["chain"] == [str(top), str(layers[0])]
        assert (result["mountpoint"], result["mode"], result["foreground"]) == (
            str(point), "read-only", False)
        assert {"disk.raw", "disk.vhd"} <= set(result["files"])
        assert int(os.getxattr(point, "user.vhdfs.pid")) == result["pid"]
        assert (point / "disk.raw").read_bytes() == flat
        gone = vhdfs("umount", "--json", point)
        assert set(json.loads(gone.stdout)) == UMOUNT_KEYS
        assert json.loads(gone.stdout)["mountpoint"] == str(point)
        assert not os.path.ismount(point)
    finally:
        force_unmount(point)


def test_a_foreground_mount_prints_its_object_once_it_answers(tmp_path):
    top = make_chain(tmp_path / "chain", 1)[-1]
    point = tmp_path / "mnt"
    point.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "vhdfs", "mount", top, point, "--foreground",
                             "--json", "--rw"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=PROJECT_ROOT)
    try:
        text = ""
        deadline = time.monotonic() + TIMEOUT
        while not text.endswith("}\n"):  # the object, indented: its last line is "}"
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, proc.stderr.read()
            text += line
        result = json.loads(text)
        assert set(result) == MOUNT_KEYS
        assert (result["mode"], result["foreground"], result["pid"]) == ("writable", True,
                                                                         proc.pid)
        assert os.path.ismount(point) and (point / "disk.raw").stat().st_size == 8 << 20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert proc.stdout.read() == ""  # nothing after the one object
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(point)
