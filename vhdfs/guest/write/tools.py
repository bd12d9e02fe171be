"""The file systems' own tools the guest writers run: where each comes from, and running
one so that its failure is one line in its own words."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vhdfs.guest.write.errors import ToolFailed, ToolMissing

#: executable -> the Debian package that installs it
PACKAGES = {
    "ntfs-3g": "ntfs-3g",
    "debugfs": "e2fsprogs",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdel": "mtools",
    "mrd": "mtools",
    "mren": "mtools",
    "fusermount3": "fuse3",
}
TOOL_TIMEOUT = 3600.0  # one tool run (one file copied, at most); a hung tool is stopped
SBIN = ("/usr/sbin", "/sbin")  # debugfs lives here, outside a normal user's PATH

# Test hook, read in pause_for_test only: VHDFS_TEST_WRITE_PAUSE=FLAG pauses a guest write
# once, at the first pause point named by VHDFS_TEST_WRITE_PAUSE_AT: "between" (after the
# first change, before the next: the default) or "in-file" (ntfs-3g's copy of a file, once
# part of it is written). It writes FLAG.reached (its pid) and waits for FLAG.go, so that a
# test can kill the command while the private mount is up and the guest half changed.
ENV_PAUSE = "VHDFS_TEST_WRITE_PAUSE"
ENV_PAUSE_AT = "VHDFS_TEST_WRITE_PAUSE_AT"
PAUSE_LIMIT = 300.0
_paused = False


def find_tool(name: str) -> str:
    """The path of `name`, or ToolMissing naming the package to install."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if found is None:
        raise ToolMissing(f"{name} is not installed; it writes this file system for vhdfs: "
                          f"install the Debian package {PACKAGES.get(name, name)} "
                          f"(apt-get install {PACKAGES.get(name, name)})")
    return found


def tool_message(output: str, drop: Sequence[str] = ()) -> str:
    """A tool's output as one line: its non-empty lines that are not banners, joined."""
    lines = [line.strip() for line in output.splitlines()]
    kept = [line for line in lines if line and not any(line.startswith(d) for d in drop)]
    return "; ".join(kept)[:600]


def run_tool(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
             drop: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run a tool to its end (standard input closed: a tool that would ask fails instead);
    a non-zero exit is ToolFailed with its own message."""
    name = os.path.basename(argv[0])
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=TOOL_TIMEOUT,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{name} did not finish within {TOOL_TIMEOUT:.0f} s and was "
                         "stopped") from None
    except OSError as exc:
        raise ToolFailed(f"{name} could not be started: {os.strerror(exc.errno or 0)}") \
            from None
    if done.returncode:
        said = tool_message(done.stderr + "\n" + done.stdout, drop)
        raise ToolFailed(f"{name}: {said or f'exit status {done.returncode}'}")
    return done


def pause_for_test(point: str) -> None:
    """The test hook of ENV_PAUSE (once per process; a no-op unless the variable is set)."""
    global _paused
    flag = os.environ.get(ENV_PAUSE)
    if _paused or not flag or os.environ.get(ENV_PAUSE_AT, "between") != point:
        return
    _paused = True
    Path(f"{flag}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT
    while not os.path.exists(f"{flag}.go") and time.monotonic() < deadline:
        time.sleep(0.02)
