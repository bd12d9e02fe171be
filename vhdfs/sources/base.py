"""The interface every byte source offers to a layer."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Source(ABC):
    """Positional reads (and, when writable, writes) on one stored object.

    Implementations are thread-safe: no shared seek position, so worker threads may read
    concurrently.
    """

    name: str
    writable: bool = False
    # True when reads may wait on a network: callers on an event loop must use a thread.
    remote: bool = False

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset`, or ImageIOError (short reads included)."""

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes at `offset` (sources override this to avoid a copy)."""
        view[:] = self.read_at(offset, len(view))

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges in [start, end) that may hold data; the rest reads as zeros (a sparse
        file's holes, a page blob's unwritten pages). By default: all of it."""
        return [(start, end)] if end > start else []

    def write_at(self, offset: int, data: bytes) -> None:
        raise NotImplementedError(f"{self.name} is read-only")

    def sync(self) -> None:  # noqa: B027 - nothing to do for read-only sources
        """Make every completed write durable."""

    def truncate(self, size: int) -> None:
        raise NotImplementedError(f"{self.name} is read-only")

    def version_stamp(self) -> tuple[int, float, str]:
        """Size, modification time (seconds since the epoch) and a tag that changes whenever
        the stored bytes may have: what an upload fingerprints to know it resumes the same
        source. By default the size alone."""
        size = self.size()
        return size, 0.0, str(size)

    def identity(self) -> tuple:
        """Something that is equal for two sources on the same stored object (cycle checks)."""
        return ("name", self.name)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
