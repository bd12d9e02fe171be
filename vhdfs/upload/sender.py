"""Sending an upload's page writes: `concurrency` at a time, and up to four times as many
when they are small, each checked and counted; and the progress bar that shows what was
sent and what was skipped.

A write of a few sectors (a fragmented disk: 746 of them for 1.9 MiB of data on the chain
of docs/benchmarks.md) takes a round trip whatever its size, so a write of at most 64 KiB
(or a clear, which has no body) takes a quarter of a sending slot: `concurrency` writes at
once, or up to 4 x `concurrency` small ones (32 by default, AzCopy's own default on a small
machine), never more than the process's connection pool. Anything larger takes a whole
slot, as every write did before (letting the 256 KiB writes of the 4 GiB benchmark disk go
32 at a time showed no clear gain, and cost 6% more CPU). As many writes again are handed
over ahead, so a sender never waits for the reader; memory stays within `concurrency` x 4 MiB
in flight either way.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from vhdfs.azure.client import POOL_SIZE, remote_errors
from vhdfs.errors import Interrupted, RemoteError
from vhdfs.progress import Progress
from vhdfs.units import human
from vhdfs.upload.planning import MAX_WRITE, Write

SMALL_WRITE = 64 * 1024  # a write of at most this is bound by its round trip, not its bytes
SMALL_SHARE = 4  # a small write takes 1 / SMALL_SHARE of a slot


def write_cost(write: Write) -> int:
    """What a write takes of the sending slots, in quarters of a slot."""
    small = write.data is None or write.length <= SMALL_WRITE
    return 1 if small else SMALL_SHARE


def sender_threads(concurrency: int) -> int:
    """Threads enough for every write the slots let be in flight at once."""
    return max(1, min(concurrency * SMALL_SHARE, POOL_SIZE))


class Sender:
    """Page writes in `concurrency` slots (a small write takes a quarter: write_cost), and as
    many again handed over and waiting. Each write carries a Content-MD5 unless
    `content_md5` is off (a managed disk's endpoint refuses it)."""

    def __init__(self, client: Any, lease: Any, name: str, secrets: tuple[str, ...],
                 concurrency: int, present: list[tuple[int, int]], *,
                 content_md5: bool = True) -> None:
        self.client = client
        self.lease = lease
        self.name = name
        self.secrets = secrets
        self.present = present
        self._starts = [lo for lo, _ in present]
        self._budget = concurrency * SMALL_SHARE  # cost of the writes in flight, at most
        self._thread_count = sender_threads(concurrency)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Two conditions, so that an answer wakes one sender thread and the submitter, not
        # every thread (a wake-up of 32 threads per write cost more than the write).
        self._ready = threading.Condition(self._lock)  # sender threads: a write may start
        self._room = threading.Condition(self._lock)  # the submitter, drain: room, answers
        self._waiting: deque[tuple[Write, int]] = deque()  # handed over, not started
        self._handed_cost = 0  # of the writes waiting or in flight
        self._running_cost = 0  # of the writes in flight
        self._running = 0  # writes in flight
        self._in_flight = 0  # writes waiting or in flight
        self._closing = False
        self.content_md5 = content_md5
        self.error: BaseException | None = None
        self.sent = 0
        self.cleared = 0
        self.present_bytes = 0
        self.queued = 0
        self.writes = 0
        self.most_at_once = 0  # writes in flight at the same time, at most

    def _covered(self, write: Write) -> bool:
        i = bisect.bisect_right(self._starts, write.offset) - 1
        return i >= 0 and self.present[i][1] >= write.end

    def submit(self, write: Write) -> None:
        if self.error is not None:
            raise self.error
        if write.data is not None and (write.length > MAX_WRITE or write.offset % 512 or
                                       write.length % 512):
            raise RemoteError(f"internal: refusing a page write of {write.length} bytes at "
                              f"{write.offset} (Azure takes at most 4 MiB, 512-byte aligned)")
        if write.data is not None and self.present and self._covered(write):
            self.present_bytes += write.length
            return
        if not self._threads:
            self._start()
        cost = write_cost(write)
        with self._lock:
            self._room.wait_for(lambda: self.error is not None or
                                self._handed_cost + cost <= 2 * self._budget)
            if self.error is not None:
                raise self.error
            self._handed_cost += cost
            self._in_flight += 1
            self.queued += write.length
            self._waiting.append((write, cost))
            self._ready.notify()

    def _start(self) -> None:
        for index in range(self._thread_count):
            thread = threading.Thread(target=self._work, name=f"vhdfs-upload-{index}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next(self) -> tuple[Write, int] | None:
        """The next write once the budget has room for it (in order); None when closing."""
        with self._lock:
            self._ready.wait_for(self._can_start)
            if not self._waiting:
                return None
            write, cost = self._waiting.popleft()
            self._running_cost += cost
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            if self._waiting and self._can_start():
                self._ready.notify()  # the next fits too: another thread takes it
            return write, cost

    def _can_start(self) -> bool:
        if self._waiting:
            return self._running_cost + self._waiting[0][1] <= self._budget
        return self._closing

    def _work(self) -> None:
        while (item := self._next()) is not None:
            write, cost = item
            outcome = self._send(write)
            with self._lock:
                self._running_cost -= cost
                self._running -= 1
                self._handed_cost -= cost
                self._in_flight -= 1
                if isinstance(outcome, BaseException):
                    self.error = self.error or outcome
                    self._ready.notify_all()
                elif outcome:
                    self.writes += 1
                    if write.data is None:
                        self.cleared += write.length
                    else:
                        self.sent += write.length
                self._ready.notify()
                self._room.notify_all()

    def _send(self, write: Write) -> bool | BaseException:
        """One request: True when answered, what it failed with, or False when not sent
        (the upload had failed already)."""
        if self.error is not None:
            return False
        try:
            where = f"writing {write.length} bytes at offset {write.offset}"
            with remote_errors(self.name, where, self.secrets):
                if write.data is None:
                    self.client.clear_page(offset=write.offset, length=write.length,
                                           lease=self.lease)
                else:
                    self.client.upload_page(write.data, offset=write.offset, length=write.length,
                                            lease=self.lease, validate_content=self.content_md5)
        except BaseException as exc:
            return exc
        return True

    def drain(self) -> None:
        """Wait until every write handed out so far has been answered."""
        with self._lock:
            self._room.wait_for(lambda: not self._in_flight)
        if self.error is not None:
            raise self.error

    def _stop(self) -> None:
        with self._lock:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def finish(self) -> None:
        self._stop()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Send nothing more; wait for the writes in flight (their answers are not needed)."""
        with self._lock:
            self.error = self.error or Interrupted("upload interrupted")
            while self._waiting:
                _, cost = self._waiting.popleft()
                self._handed_cost -= cost
                self._in_flight -= 1
            self._room.notify_all()
        self._stop()


class UploadProgress(Progress):
    """The progress bar with bytes sent and skipped."""

    def __init__(self, label: str, total: int, counts: Callable[[], tuple[int, int, int]],
                 quiet: bool = False) -> None:
        super().__init__(label, total, quiet=quiet)
        self.counts = counts
        self.sending_done = False

    def complete(self) -> None:
        """Every write has been answered: now (and only now) show 100%."""
        self.sending_done = True
        self.update(self.total)
        self.finish()

    def _extra(self) -> str:
        sent, queued, present = self.counts()
        skipped = max(0, self.done - queued - present)
        text = f"sent {human(sent)}, skipped {human(skipped)}"
        return text + (f" ({human(present)} already there)" if present else "")

    def update(self, done: int) -> None:
        if not self.sending_done:
            done = min(done, self.total - 1)  # reading is done before the last writes are
        super().update(done)
