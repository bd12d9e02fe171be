"""Start writeback early on a file being filled: sync_file_range(WRITE) every so many bytes.

A long write followed by one fsync leaves the whole file to the fsync; asking the kernel to
start writing back as data arrives (without waiting) overlaps the device's work with ours,
so the fsync that makes the result durable finds little left to do. Durability still comes
only from fsync; this is a hint, and a no-op where the call does not exist.
"""

from __future__ import annotations

import ctypes
import threading

EVERY = 64 << 20
_SYNC_FILE_RANGE_WRITE = 2  # start writeback, do not wait

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)  # not in every C library (musl, BSD)


class WritebackAhead:
    """Call `wrote(n)` after each write; thread-safe."""

    def __init__(self, fd: int | None, every: int = EVERY) -> None:
        self.fd = fd
        self.every = every
        self.pending = 0
        self.lock = threading.Lock()

    def wrote(self, amount: int) -> None:
        if self.fd is None or _sync_file_range is None:
            return
        with self.lock:
            self.pending += amount
            if self.pending < self.every:
                return
            self.pending = 0
        _sync_file_range(self.fd, ctypes.c_longlong(0), ctypes.c_longlong(0),
                         _SYNC_FILE_RANGE_WRITE)
