"""ext2/3/4 through `debugfs -w` (e2fsprogs).

Why debugfs and not fuse2fs: debugfs edits the image file directly, one command per run,
with the same library (libext2fs) and the same file-copy code as `mke2fs -d`; no second
FUSE mount is needed (fuse2fs would be one more, in its own package); and what it creates
belongs to root (uid 0, gid 0) whoever runs vhdfs, as a distribution's files do, where
fuse2fs gives them the uid of the user running it. debugfs writes past the journal, so a
volume whose journal still needs recovery is refused beforehand (vhdfs.guest.write.plan).

debugfs exits 0 even when a command fails: its failure is the text it writes to standard
error after its banner, so each change is one run and any such text fails it. One run
finishes its file before it exits, even when vhdfs is killed meanwhile (the private mount
waits for it), so every file is complete or absent. A replaced file is written under a
temporary name first (a full volume then leaves the old file as it was), then swapped in
with the old file's owner and mode.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from pathlib import Path

from vhdfs.guest.write.errors import ToolFailed
from vhdfs.guest.write.plan import MakeDir, Remove, WriteFile, shown
from vhdfs.guest.write.tools import find_tool, run_tool, tool_message

BANNER = "debugfs "  # "debugfs 1.47.0 (5-Feb-2023)", written on standard error by every run
S_IFREG = 0o100000


def quoted(text: str) -> str:
    """A path as a debugfs command argument: in double quotes, a quote doubled (its
    command-line parser's rule); line breaks are refused at planning."""
    return '"' + text.replace('"', '""') + '"'


def guest_path(path: tuple[str, ...]) -> str:
    return "/" + "/".join(path)


class ExtWriter:
    tool = "debugfs"

    def __init__(self, image: Path, scratch: Path) -> None:
        self.debugfs = find_tool("debugfs")
        self.image = image
        self.scratch = scratch  # the private folder: links to the sources, safe to name
        self.serial = itertools.count(1)

    def _run(self, command: str) -> str:
        """One command in its own run; its complaints on standard error fail it."""
        done = run_tool([self.debugfs, "-w", "-R", command, str(self.image)])
        said = tool_message(done.stderr, drop=(BANNER,))
        if said:
            raise ToolFailed(f"debugfs: {said}")
        return done.stdout

    def _source(self, source: Path) -> Path:
        """A name for `source` that needs no quoting (a symbolic link in the private
        folder; debugfs opens it, so the file's own mode is what it copies)."""
        link = self.scratch / f"source-{next(self.serial)}"
        link.symlink_to(os.path.abspath(source))
        return link

    def make_dir(self, change: MakeDir) -> None:
        self._run(f"mkdir {quoted(guest_path(change.path))}")

    def remove(self, change: Remove) -> None:
        verb = "rmdir" if change.is_dir else "rm"
        self._run(f"{verb} {quoted(guest_path(change.path))}")

    def write_file(self, change: WriteFile, advance: Callable[[int], None]) -> None:
        source = self._source(change.source)
        final = guest_path(change.path)
        try:
            if change.replaces is None:
                try:
                    self._run(f"write {source} {quoted(final)}")
                except ToolFailed as exc:
                    if "exists" in exc.message:  # not ours to remove: it appeared since
                        exc.state = f"{shown(change.path)} exists (since the plan); unchanged"
                    else:
                        self._forget(final)  # what a failed write may have left
                        exc.state = f"{shown(change.path)} was not written"
                    raise
            else:
                self._replace(change, source, final)
        finally:
            with contextlib.suppress(OSError):
                source.unlink()
        advance(change.size)

    def _forget(self, path: str) -> None:
        """After a failed write: remove what it may have left under the name."""
        with contextlib.suppress(ToolFailed):
            self._run(f"rm {quoted(path)}")

    def _replace(self, change: WriteFile, source: Path, final: str) -> None:
        old = change.replaces
        assert old is not None
        temporary = guest_path((*change.path[:-1], f".vhdfs-put-{os.getpid()}.tmp"))
        try:
            self._run(f"write {source} {quoted(temporary)}")
            self._run(f"sif {quoted(temporary)} mode 0{S_IFREG | old.mode:o}")
            self._run(f"sif {quoted(temporary)} uid {old.uid}")
            self._run(f"sif {quoted(temporary)} gid {old.gid}")
        except ToolFailed as exc:
            self._forget(temporary)
            exc.state = f"{shown(change.path)} is unchanged"
            raise
        try:
            self._run(f"rm {quoted(final)}")
        except ToolFailed as exc:
            self._forget(temporary)
            exc.state = f"{shown(change.path)} is unchanged"
            raise
        try:  # debugfs's ln leaves the link count alone: one name again after the unlink
            self._run(f"ln {quoted(temporary)} {quoted(final)}")
        except ToolFailed as exc:
            exc.state = (f"the old {shown(change.path)} was removed and the new one is "
                         f"complete under {shown((*change.path[:-1], temporary.rsplit('/', 1)[1]))}")
            raise
        self._run(f"unlink {quoted(temporary)}")
