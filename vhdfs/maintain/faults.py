"""Fault injection for crash tests: die with SIGKILL at the N-th write or sync.

Every write, sync, truncate, rename and unlink a maintenance job makes goes through
`Faults.point` first, so a test can stop the process just before any one of them and then
check that re-running the job gives the uninterrupted result. Two environment switches
drive a job run as a command (tests only; unset, they cost nothing):

  VHDFS_FAULT_KILL_AFTER=N   kill -9 this process before its (N+1)-th write or sync
  VHDFS_FAULT_DELAY=SECONDS  sleep this long after each of them (to land a real kill)
"""

from __future__ import annotations

import os
import signal
import time

from vhdfs.sources.base import Source

ENV_KILL_AFTER = "VHDFS_FAULT_KILL_AFTER"
ENV_DELAY = "VHDFS_FAULT_DELAY"


class Faults:
    """Counts the I/O events of one job; kills the process at a chosen one."""

    def __init__(self, kill_after: int | None = None, delay: float = 0.0, *,
                 record: bool = False) -> None:
        self.kill_after = kill_after
        self.delay = delay
        self.events = 0
        self.log: list[str] = []  # what each event was (kept only when killing or asked to)
        self.record = record or kill_after is not None

    @classmethod
    def from_env(cls) -> Faults:
        kill = os.environ.get(ENV_KILL_AFTER)
        delay = os.environ.get(ENV_DELAY)
        return cls(int(kill) if kill else None, float(delay) if delay else 0.0)

    def point(self, what: str) -> None:
        """Called just before an I/O event that changes stored state."""
        if self.kill_after is not None and self.events >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.events += 1
        if self.record:
            self.log.append(what)
        if self.delay:
            time.sleep(self.delay)


class FaultySource(Source):
    """A source whose writes, syncs and truncates pass through `Faults.point` first."""

    def __init__(self, inner: Source, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.name = inner.name
        self.writable = inner.writable
        self.remote = inner.remote

    def size(self) -> int:
        return self.inner.size()

    def read_at(self, offset: int, length: int) -> bytes:
        return self.inner.read_at(offset, length)

    def write_at(self, offset: int, data: bytes) -> None:
        self.faults.point(f"write {len(data)} at {offset}")
        self.inner.write_at(offset, data)

    def sync(self) -> None:
        self.faults.point("sync")
        self.inner.sync()

    def truncate(self, size: int) -> None:
        self.faults.point(f"truncate {size}")
        self.inner.truncate(size)

    def identity(self) -> tuple:
        return self.inner.identity()

    def close(self) -> None:
        self.inner.close()
