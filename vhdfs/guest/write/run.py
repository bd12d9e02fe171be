"""Carry out a plan with the file system's own tool, on its partition file in a mount.

`open_writer` picks the tool for the volume (ntfs-3g, debugfs or mtools: each module says
why that one); `apply` makes the changes in order and stops at the first that fails, with
one line saying what the tool said, what that change left and what was done before it.
Every change is whole or absent, so the guest file system is consistent wherever it stops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vhdfs.guest.write.errors import ToolFailed, WriteFailed
from vhdfs.guest.write.ext import ExtWriter
from vhdfs.guest.write.fat import FatWriter
from vhdfs.guest.write.ntfs import NtfsWriter
from vhdfs.guest.write.plan import Change, MakeDir, Plan, Remove, Target, WriteFile, shown
from vhdfs.guest.write.tools import find_tool, pause_for_test

#: the executables each tool needs, checked before anything is mounted
NEEDS = {"ntfs-3g": ("ntfs-3g", "fusermount3"), "debugfs": ("debugfs",),
         "mtools": ("mcopy", "mmd", "mdel", "mrd", "mren")}
TOOL_MOUNT = "fs"  # ntfs-3g's mount point in the private folder


class Writer(Protocol):
    tool: str

    def make_dir(self, change: MakeDir) -> None: ...

    def write_file(self, change: WriteFile, advance: Callable[[int], None]) -> None: ...

    def remove(self, change: Remove) -> None: ...


def check_tools(target: Target) -> None:
    """ToolMissing (naming the Debian package) before anything is mounted or written."""
    for name in NEEDS[target.tool]:
        find_tool(name)


@contextlib.contextmanager
def open_writer(target: Target, partition: Path, scratch: Path) -> Iterator[Writer]:
    """The writer of `target`'s file system over `partition` (its file in a writable
    mount); `scratch` is a private folder for the tool (its mount point, links)."""
    if target.tool == "ntfs-3g":
        with NtfsWriter.mounted(partition, scratch / TOOL_MOUNT) as ntfs:
            yield ntfs
    elif target.tool == "debugfs":
        yield ExtWriter(partition, scratch)
    else:
        yield FatWriter(partition)


@dataclass
class Outcome:
    done: list[Change] = field(default_factory=list)

    @property
    def written(self) -> list[WriteFile]:
        return [c for c in self.done if isinstance(c, WriteFile)]

    @property
    def folders(self) -> list[MakeDir]:
        return [c for c in self.done if isinstance(c, MakeDir)]

    @property
    def removed(self) -> list[Remove]:
        return [c for c in self.done if isinstance(c, Remove)]


def _verb(change: Change) -> str:
    if isinstance(change, MakeDir):
        return "making the folder"
    if isinstance(change, WriteFile):
        return "writing"
    return "removing the folder" if change.is_dir else "removing"


def summary(done: list[Change]) -> str:
    """'2 files written, 1 folder made' for messages."""
    counts = [(sum(isinstance(c, WriteFile) for c in done), "file", "written"),
              (sum(isinstance(c, MakeDir) for c in done), "folder", "made"),
              (sum(isinstance(c, Remove) for c in done), "entry", "removed")]
    parts = [f"{n} {what if n == 1 else ('entries' if what == 'entry' else what + 's')} {verb}"
             for n, what, verb in counts if n]
    return ", ".join(parts) or "nothing changed"


def apply(plan: Plan, writer: Writer, advance: Callable[[int], None],
          outcome: Outcome) -> None:
    """Make the plan's changes in order, recording each in `outcome` once done."""
    for index, change in enumerate(plan.changes):
        if index:
            pause_for_test("between")
        try:
            if isinstance(change, MakeDir):
                writer.make_dir(change)
            elif isinstance(change, WriteFile):
                writer.write_file(change, advance)
            else:
                writer.remove(change)
        except ToolFailed as exc:
            left = len(plan.changes) - index - 1
            before = f"before it: {summary(outcome.done)}" if outcome.done else \
                "nothing was changed before it"
            after = f"; the {left} change{'s' if left != 1 else ''} after it were not made" \
                if left else ""
            raise WriteFailed(f"{plan.target.description}: {_verb(change)} "
                              f"{shown(change.path)} failed: {exc.message}"
                              f"{'; ' + exc.state if exc.state else ''}; {before}{after}") \
                from None
        outcome.done.append(change)
