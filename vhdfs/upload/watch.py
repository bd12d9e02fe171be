"""An upload is of a consistent source, or it fails: every local file it reads is watched.

Locks keep vhdfs writers away from an image being uploaded, but not other programs, and a
raw file or a file of a mount has no lock at all. So the size, mtime, ctime and inode of
each local file an upload reads are recorded before the first read (the file named on the
command line is looked at before it is even opened) and compared after the last one. A file
that changed in between was read partly old and partly new: the upload then fails before it
marks the blob complete, naming the file and what changed.

A file of a writable vhdfs mount (MNT/disk.vhd, MNT/disk.raw, MNT/p1) is refused before
anything is read: its writer may change it at any moment. A read-only mount's files keep
their times and contents, so they are good sources.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from vhdfs.azure.location import looks_remote
from vhdfs.errors import ImageBusy
from vhdfs.mounttable import vhdfs_mount_of
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile

#: The metadata source id of an upload whose source changed while it was read: a --resume
#: starts it over (its pages are of no consistent version of the source).
RESTART = "restart:source-changed-while-read"

# Test hook, read in pause_for_test only: VHDFS_TEST_UPLOAD_PAUSE=FLAG pauses an upload once,
# right after its first page write was handed out (the source is then partly read): it writes
# FLAG.reached (its pid) and waits for FLAG.go, so a test can change the source mid-upload.
ENV_PAUSE = "VHDFS_TEST_UPLOAD_PAUSE"
PAUSE_LIMIT = 300.0
_pause_decided = False


class _HasSource(Protocol):
    source: Source


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileState:
        return cls(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_dev, info.st_ino)


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


@dataclass
class _Watched:
    path: str
    fd: int  # the descriptor the upload reads through
    before: FileState

    def change(self) -> str:
        """What changed since `before`, or ''."""
        try:
            named = os.stat(self.path)
        except OSError:
            return f"{self.path}: was removed or renamed"
        if (named.st_dev, named.st_ino) != (self.before.dev, self.before.ino):
            return f"{self.path}: was replaced by another file"
        now, was = FileState.of(os.fstat(self.fd)), self.before
        if now.size != was.size:
            return f"{self.path}: its size changed from {was.size} to {now.size} bytes"
        if now.mtime_ns != was.mtime_ns:
            return f"{self.path}: was modified (mtime {_when(was.mtime_ns)}, then {_when(now.mtime_ns)})"
        if now.ctime_ns != was.ctime_ns:
            return f"{self.path}: was changed (ctime {_when(was.ctime_ns)}, then {_when(now.ctime_ns)})"
        return ""


def refuse_writable_mount(path: str) -> None:
    """Refuse a file shown by a writable vhdfs mount, naming the mount and the fix."""
    mount = vhdfs_mount_of(path)
    if mount is None or not mount.writable:
        return
    image = f" of {mount.image}" if mount.image else ""
    pid = f", pid {mount.pid}" if mount.pid else ""
    raise ImageBusy(f"{path}: is a file of the writable vhdfs mount {mount.mountpoint}{image}"
                    f"{pid}, whose writes may change it while it is read; unmount it first "
                    f"(vhdfs umount {mount.mountpoint}) or mount the image read-only and upload "
                    "that mount's disk.vhd", path)


@dataclass
class WatchedFiles:
    """The local files one upload reads, each with its state before the first read."""

    files: list[_Watched] = field(default_factory=list)
    named: dict[str, FileState] = field(default_factory=dict)  # looked at before opening

    @classmethod
    def before_opening(cls, spec: str) -> WatchedFiles:
        """Start with the file named on the command line: refused if a writable mount shows
        it, else its state now, before it is opened and anything of it is read."""
        watched = cls()
        if not looks_remote(spec):
            refuse_writable_mount(spec)
            try:
                watched.named[os.path.realpath(spec)] = FileState.of(os.stat(spec))
            except OSError:
                pass  # opening it says what is wrong
        return watched

    def add_source(self, source: Source) -> None:
        if not isinstance(source, LocalFile):
            return  # a blob is read with its etag as a condition instead
        path = str(source.path)
        refuse_writable_mount(path)
        opened = FileState.of(os.fstat(source.fd))
        before = self.named.get(os.path.realpath(path))
        if before is None or (before.dev, before.ino) != (opened.dev, opened.ino):
            before = opened  # not named, or replaced before it was opened: what was opened
        self.files.append(_Watched(path, source.fd, before))

    def add_layers(self, layers: Iterable[_HasSource]) -> None:
        for layer in layers:
            self.add_source(layer.source)

    def changes(self) -> str:
        """The first change of a watched file, described, or '' when none changed."""
        for watched in self.files:
            found = watched.change()
            if found:
                return found
        return ""


def pause_for_test() -> None:
    """The test hook of ENV_PAUSE (once per process; a no-op unless the variable is set)."""
    global _pause_decided
    if _pause_decided:
        return
    _pause_decided = True
    flag = os.environ.get(ENV_PAUSE)
    if not flag:
        return
    Path(f"{flag}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT
    while not os.path.exists(f"{flag}.go") and time.monotonic() < deadline:
        time.sleep(0.02)
