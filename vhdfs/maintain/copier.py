"""What the VHD and VHDX commits share (vhdfs.maintain.commit, commit_vhdx): the copying
loop, where the child's runs are read ahead in a thread while the parent is written and the
kernel is asked to start writing the parent back as data arrives (so the syncs that order
data before metadata find little left to do), the steps around it that do not depend on the
format (damage refused, where to resume, the other children warned of), and what a commit
reports."""

from __future__ import annotations

import datetime
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from vhdfs.errors import RefusedError, UsageError
from vhdfs.image import ImageLayer, RunKind
from vhdfs.maintain.faults import Faults, FaultySource
from vhdfs.maintain.findings import RANK_COMMIT, FileScan, Fix, scan_or_refuse
from vhdfs.maintain.journals import PHASE_COPYING
from vhdfs.maintain.siblings import find_children
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile
from vhdfs.sources.writeback import WritebackAhead
from vhdfs.vhd.layer import Layer

CHUNK = 4 << 20
BUFFERS = 4  # memory in flight: BUFFERS * CHUNK
# Resuming re-copies at most this much; each checkpoint costs a flush (three syncs for VHD).
CHECKPOINT_BYTES = 1 << 30

L = TypeVar("L", bound=ImageLayer)  # a child's layer, of its own format


@dataclass
class CommitResult:
    """What a commit did (VHD and VHDX alike): the --json result of `vhdfs commit`."""

    child: str
    parent: str
    found_by: str
    bytes_copied: int = 0
    runs: int = 0
    blocks: int = 0
    resumed_at: int | None = None  # the child block a previous, interrupted run had reached
    other_children: list[str] = field(default_factory=list)
    searched: list[str] = field(default_factory=list)
    child_deleted: bool = False


@dataclass
class Piece:
    """`length` bytes for the disk at `offset` in `buffer`, or (buffer None) the end of a block."""

    offset: int
    length: int
    buffer: memoryview | None
    block: int
    runs: int = 0  # at the end of a block: how many runs it had


class ReadAhead:
    """Iterate the child's HERE runs of `blocks` as pieces; call `release` for each buffer."""

    def __init__(self, child: Layer, blocks: Iterable[int]) -> None:
        self.child = child
        self.blocks = blocks
        self.ready: queue.Queue = queue.Queue()
        self.free: queue.Queue = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(memoryview(bytearray(CHUNK)))
        self.stopping = False
        self.thread = threading.Thread(target=self._read, name="commit-read-ahead", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for index in self.blocks:
                runs = 0
                for run in self.child.block_runs(index):
                    if run.kind is not RunKind.HERE:
                        continue
                    runs += 1
                    done = 0
                    while done < run.length:
                        buffer = self.free.get()
                        if self.stopping:
                            return
                        count = min(CHUNK, run.length - done)
                        self.child.read_into(run.file_offset + done, buffer[:count])
                        self.ready.put(Piece(run.offset + done, count, buffer, index))
                        done += count
                self.ready.put(Piece(0, 0, None, index, runs))
            self.ready.put(None)
        except BaseException as exc:  # handed to the writing thread, raised there
            self.ready.put(exc)

    def __iter__(self) -> Iterator[Piece]:
        while True:
            item = self.ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buffer: memoryview) -> None:
        self.free.put(buffer)

    def close(self) -> None:
        self.stopping = True
        for _ in range(BUFFERS):  # wake the reader if it waits for a buffer
            self.free.put(memoryview(bytearray(0)))
        self.thread.join()


def now_iso() -> str:
    """The time a commit journal says its commit started."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refuse_damage(path: str | Path, role: str, scan: Callable[[Source], FileScan],
                  ignore: set[str] = frozenset()) -> None:
    """Refuse the child or parent at `path` when `scan` (its format's check) finds errors
    other than those in `ignore`."""
    with LocalFile(path) as source:
        found = scan_or_refuse(source, scan, "commit")
    problems = [f.message for f in found.errors if f.code not in ignore]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RefusedError(f"{path}: the {role} has unrepaired damage: {problems[0]}{more}; run "
                           f"vhdfs check --repair {path} first")


def finish_fix(child: Path | None, parent: str, run_commit: Callable[..., CommitResult],
               mark_verb: str) -> Fix | None:
    """The repair that finishes an unfinished commit of `child` into `parent` by running
    `run_commit` (its format's commit) again; None when the child was not found. `mark_verb`:
    what happens to the mark, in the format's words."""
    if child is None:
        return None

    def finish(source: FaultySource) -> None:
        run_commit(str(child), OpenOptions(parents=[parent]), faults=source.faults, quiet=True)
    return Fix(RANK_COMMIT, f"finish the commit: copy the rest of {child} into it, then "
               f"{mark_verb} the mark and the journal", finish)


class JournalState(Protocol):
    """What a commit journal of either format says about where its commit got to."""

    child: str
    phase: str
    next_block: int
    child_mtime_ns: int


class CommitJob:
    """One commit of a child into its parent: the steps both formats take the same way."""

    def __init__(self, child_spec: str, options: OpenOptions, faults: Faults, quiet: bool,
                 warn: Callable[[str], None], checkpoint_bytes: int) -> None:
        self.child_path = Path(child_spec)
        self.options = options
        self.faults = faults
        self.quiet = quiet
        self.warn = warn
        self.checkpoint_bytes = checkpoint_bytes

    def open_child_as(self, source: Source, layer_of: Callable[[Source], L]) -> L:
        """The child as a layer of its format (`layer_of`), refused unless it is a
        differencing disk; `source` is closed when it cannot be opened."""
        try:
            child = layer_of(source)
        except BaseException:
            source.close()
            raise
        if not child.is_differencing:
            child.close()
            raise UsageError(f"{self.child_path}: is a {child.disk_type.name.lower()} disk, not a "
                             "differencing child: it has no parent to commit into")
        return child

    def refuse_if_mid_commit(self, marked: bool) -> None:
        """A child that is itself the parent of an unfinished commit holds mixed data."""
        if marked:
            raise RefusedError(f"{self.child_path}: a commit of its own child into it is unfinished, "
                               "so its data is a mix; finish that commit first (vhdfs check "
                               f"{self.child_path} says how)")

    @staticmethod
    def refuse_other_child(parent_path: Path, journal: JournalState) -> None:
        raise RefusedError(f"{parent_path}: a commit of {journal.child} into it is unfinished; "
                           f"finish that first (vhdfs commit {journal.child})")

    def resume_point(self, journal: JournalState) -> int:
        """The child block to go on from, by the journal of this child's unfinished commit."""
        if journal.phase != PHASE_COPYING:
            return 0
        if journal.child_mtime_ns != self.child_path.stat().st_mtime_ns:
            self.warn(f"{self.child_path} changed since its commit was interrupted; copying all "
                      "of it again")
            return 0
        return journal.next_block

    def find_other_children(self, parent_id: bytes, parent_path: Path, result: CommitResult
                            ) -> list[Path]:
        """The parent's other children beside it, beside the child and in --search (recorded
        in `result`, with the folders searched)."""
        folders = [parent_path.parent, self.child_path.parent] + [Path(s) for s in self.options.search]
        result.searched = list(dict.fromkeys(str(f) for f in folders))
        others = find_children(parent_id, folders, exclude=[self.child_path])
        result.other_children = [str(p) for p in others]
        return others

    def copy_pieces(self, parent: ImageLayer, pieces: ReadAhead, parent_fd: int,
                    progress: Progress, result: CommitResult, checkpoint: Callable[[int], None],
                    end_of_block: Callable[[int], int] | None = None) -> None:
        """Write the child's `pieces` into `parent`, then flush it. At the end of each block
        `end_of_block(block)` writes what else the block needs (returns the bytes written);
        every `checkpoint_bytes` the parent is flushed and `checkpoint(next_block)` records
        how far the copy is durable. `pieces` is closed in any case."""
        writeback = WritebackAhead(parent_fd)
        try:
            since_checkpoint = 0
            for piece in pieces:
                if piece.buffer is not None:
                    parent.write(piece.offset, piece.buffer[:piece.length])
                    pieces.release(piece.buffer)
                    writeback.wrote(piece.length)
                    progress.advance(piece.length)
                    result.bytes_copied += piece.length
                    since_checkpoint += piece.length
                    continue
                if end_of_block is not None:
                    since_checkpoint += end_of_block(piece.block)
                result.blocks += 1  # the end of a block: everything it holds is written
                result.runs += piece.runs
                if since_checkpoint >= self.checkpoint_bytes:
                    parent.flush()
                    checkpoint(piece.block + 1)
                    since_checkpoint = 0
            parent.flush()
        finally:
            pieces.close()
        progress.finish()
