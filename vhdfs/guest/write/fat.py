"""FAT12/16/32 through mtools (mcopy, mmd, mdel, mrd, mren) on the partition file.

Why mtools: it reads and writes a FAT image file as it is (`-i FILE`: no mount, no loop
device, no root), it is the tool distributions build FAT images with, and each command
either does its one change or exits non-zero with its reason. A run finishes its file even
when vhdfs is killed meanwhile (the private mount waits for it). Standard input is closed,
so a command that would ask (a name clash) fails instead of guessing.

mtools reads `*`, `?` and `[...]` in a path as a pattern: Windows forbids the first two in
names, and names with brackets are refused at planning (a pattern could match another
file). A replaced file is copied under a temporary name first (a full volume then leaves
the old file as it was), then swapped in: delete the old one, rename the new one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vhdfs.guest.write.errors import ToolFailed
from vhdfs.guest.write.plan import MakeDir, Remove, WriteFile, shown
from vhdfs.guest.write.tools import find_tool, run_tool

#: mtools' geometry check compares the boot sector with a floppy's or a disk's layout (a
#: partition file is neither); long names always (a user's MTOOLS_NO_VFAT=1 would leave
#: 8.3 names only); names pass as UTF-8 whatever the caller's locale.
ENVIRONMENT = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "LC_ALL": "C.UTF-8"}


def spec(path: tuple[str, ...]) -> str:
    return "::/" + "/".join(path)


class FatWriter:
    tool = "mtools"

    def __init__(self, image: Path) -> None:
        self.image = image
        self.tools = {name: find_tool(name) for name in ("mcopy", "mmd", "mdel", "mrd", "mren")}

    def _run(self, name: str, *args: str) -> None:
        run_tool([self.tools[name], "-i", str(self.image), *args], env=ENVIRONMENT)

    def make_dir(self, change: MakeDir) -> None:
        self._run("mmd", spec(change.path))

    def remove(self, change: Remove) -> None:
        self._run("mrd" if change.is_dir else "mdel", spec(change.path))

    def write_file(self, change: WriteFile, advance: Callable[[int], None]) -> None:
        if change.replaces is None:
            try:
                self._run("mcopy", str(change.source), spec(change.path))
            except ToolFailed as exc:
                exc.state = f"{shown(change.path)} was not written"
                raise
            advance(change.size)
            return
        temporary = (*change.path[:-1], f".vhdfs-put-{os.getpid()}.tmp")
        try:
            self._run("mcopy", str(change.source), spec(temporary))
        except ToolFailed as exc:
            self._forget(temporary)
            exc.state = f"{shown(change.path)} is unchanged"
            raise
        try:
            self._run("mdel", spec(change.path))
        except ToolFailed as exc:
            self._forget(temporary)
            exc.state = f"{shown(change.path)} is unchanged"
            raise
        try:
            self._run("mren", spec(temporary), change.path[-1])
        except ToolFailed as exc:
            exc.state = (f"the old {shown(change.path)} was removed and the new one is "
                         f"complete under {shown(temporary)}")
            raise
        advance(change.size)

    def _forget(self, path: tuple[str, ...]) -> None:
        try:
            self._run("mdel", spec(path))
        except ToolFailed:
            pass  # nothing was left under the temporary name
