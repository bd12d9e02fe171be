"""One small progress helper for long jobs: a bar on a terminal, quiet lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from vhdfs.units import human


class Progress:
    """Report `done` of `total` bytes. On a terminal: a redrawn bar at most 10 times a
    second; otherwise: a plain line every 10% (or nothing when `quiet`)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.label = label
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def advance(self, amount: int) -> None:
        self.update(self.done + amount)

    def update(self, done: int) -> None:
        self.done = done
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.1 or done >= self.total:
                self._last_draw = now
                self._draw(now)
        else:
            decile = min(10, done * 10 // self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                print(f"{self.label}: {decile * 10}% ({human(done)} of {human(self.total)})",
                      file=self.stream)

    def _draw(self, now: float) -> None:
        fraction = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(fraction * width)
        rate = self.done / max(now - self.started, 1e-6)
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {fraction * 100:5.1f}% "
                          f"{human(self.done)} {human(int(rate))}/s ")
        self.stream.flush()

    def finish(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self._draw(time.monotonic())
            self.stream.write("\n")
        elif self._last_decile < 10:
            self.update(self.total)
