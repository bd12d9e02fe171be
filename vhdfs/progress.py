"""One small progress helper for long jobs: a bar on a terminal, quiet lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from vhdfs.units import human


class Progress:
    """Report `done` of `total` bytes. On a terminal: a redrawn bar at most 10 times a
    second; otherwise: a plain line at each quarter (or nothing when `quiet`)."""

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
        self._last_quarter = 0

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
            quarter = min(4, done * 4 // self.total)
            if quarter > self._last_quarter:
                self._last_quarter = quarter
                rate = done / max(now - self.started, 1e-6)
                extra = self._extra()
                print(f"{self.label}: {quarter * 25}% ({human(done)} of {human(self.total)}; "
                      f"{extra + '; ' if extra else ''}{human(int(rate))}/s)", file=self.stream)

    def _extra(self) -> str:
        """More to say after the amount done (subclasses: bytes sent, skipped, ...)."""
        return ""

    def _draw(self, now: float) -> None:
        fraction = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(fraction * width)
        rate = self.done / max(now - self.started, 1e-6)
        extra = self._extra()
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {fraction * 100:5.1f}% "
                          f"{human(self.done)}{', ' + extra if extra else ''} "
                          f"{human(int(rate))}/s ")
        self.stream.flush()

    def finish(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self._draw(time.monotonic())
            self.stream.write("\n")
        elif self._last_quarter < 4:
            self.update(self.total)
