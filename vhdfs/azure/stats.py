"""Process-wide counts of blob storage traffic, for `--stats` and the benchmarks.

Every HTTP attempt (retries included) made through a client from `vhdfs.azure.client` is
counted here by a pipeline policy, whatever command made it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from vhdfs.units import human


@dataclass
class TransferStats:
    requests: int = 0
    bytes_fetched: int = 0  # response bodies (ranged GETs, page range lists)
    bytes_sent: int = 0  # request bodies (page writes)
    largest_request_body: int = 0
    retries: int = 0
    memory_hits: int = 0  # blocks a read found in the memory cache of its blob
    cache_hits: int = 0  # blocks read from the persistent cache (--cache-dir)
    cache_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_request(self, body_size: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_sent += body_size
            self.largest_request_body = max(self.largest_request_body, body_size)

    def add_fetched(self, size: int) -> None:
        with self._lock:
            self.bytes_fetched += size

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def add_memory_hits(self, blocks: int) -> None:
        with self._lock:
            self.memory_hits += blocks

    def add_cache_hit(self, size: int) -> None:
        with self._lock:
            self.cache_hits += 1
            self.cache_bytes += size

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "bytes_fetched": self.bytes_fetched,
                    "bytes_sent": self.bytes_sent, "largest_request_body": self.largest_request_body,
                    "retries": self.retries, "memory_hits": self.memory_hits,
                    "cache_hits": self.cache_hits, "cache_bytes": self.cache_bytes}

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes_fetched = self.bytes_sent = 0
            self.largest_request_body = self.retries = 0
            self.memory_hits = self.cache_hits = self.cache_bytes = 0

    def summary(self) -> str:
        return summary_of(self.snapshot())


def summary_of(s: dict[str, int]) -> str:
    """The one line of --stats (and of `vhdfs umount` after `mount --stats`)."""
    text = (f"fetched {s['bytes_fetched']} bytes ({human(s['bytes_fetched'])}) in "
            f"{s['requests']} requests; sent {s['bytes_sent']} bytes ({human(s['bytes_sent'])})")
    if s["bytes_sent"]:
        text += f", largest request body {s['largest_request_body']} bytes"
    if s["retries"]:
        text += f"; {s['retries']} retried"
    if s.get("memory_hits") or s.get("cache_hits"):
        text += f"; cache hits: {s.get('memory_hits', 0)} blocks in memory"
        if s.get("cache_hits"):
            text += (f", {s['cache_hits']} from the cache folder "
                     f"({human(s.get('cache_bytes', 0))})")
    return text


TRANSFER = TransferStats()


def _after_fork_in_child() -> None:
    TRANSFER._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
