"""The copying loop of commit (and what a commit reports): the child's runs are read ahead
in a thread while the parent is written, and the kernel is asked to start writing the
parent back as data arrives, so the syncs that order data before metadata find little left
to do."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vhdfs.image import RunKind
from vhdfs.vhd.layer import Layer

CHUNK = 4 << 20
BUFFERS = 4  # memory in flight: BUFFERS * CHUNK


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
