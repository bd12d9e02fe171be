"""Sending an upload's page writes: `concurrency` at a time, each checked and counted, and
the progress bar that shows what was sent and what was skipped."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vhdfs.azure.client import remote_errors
from vhdfs.errors import Interrupted, RemoteError
from vhdfs.progress import Progress
from vhdfs.units import human
from vhdfs.upload.planning import MAX_WRITE, Write


class Sender:
    """Page writes, `concurrency` at a time, at most 2 x concurrency buffered. Each write
    carries a Content-MD5 unless `content_md5` is off (a managed disk's endpoint refuses
    it)."""

    def __init__(self, client: Any, lease: Any, name: str, secrets: tuple[str, ...],
                 concurrency: int, present: list[tuple[int, int]], *,
                 content_md5: bool = True) -> None:
        self.client = client
        self.lease = lease
        self.name = name
        self.secrets = secrets
        self.present = present
        self._starts = [lo for lo, _ in present]
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="vhdfs-upload")
        self._slots = threading.Semaphore(concurrency * 2)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self.content_md5 = content_md5
        self.error: BaseException | None = None
        self.sent = 0
        self.cleared = 0
        self.present_bytes = 0
        self.queued = 0
        self.writes = 0

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
        self._slots.acquire()
        self.queued += write.length
        with self._lock:
            self._in_flight += 1
        future = self._pool.submit(self._send, write)
        future.add_done_callback(self._done)

    def _done(self, _: object) -> None:
        self._slots.release()
        with self._lock:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def _send(self, write: Write) -> None:
        if self.error is not None:
            return
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
            with self._lock:
                self.error = self.error or exc
            return
        with self._lock:
            self.writes += 1
            if write.data is None:
                self.cleared += write.length
            else:
                self.sent += write.length

    def drain(self) -> None:
        """Wait until every write handed out so far has been answered."""
        with self._lock:
            self._idle.wait_for(lambda: not self._in_flight)
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self._pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        with self._lock:
            self.error = self.error or Interrupted("upload interrupted")
        self._pool.shutdown(wait=True, cancel_futures=True)


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
