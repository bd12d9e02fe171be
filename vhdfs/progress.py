"""One small progress helper for long jobs (convert, commit, upload).

How progress shows is the command line's choice, made once per process with `configure`
(`--progress` and `-q`); a job only says how far it is (`advance`, `update`, `finish`):
  bar    a bar redrawn at most 10 times a second, with the rate and an ETA (a terminal);
  lines  a plain line at each quarter, with the rate and an ETA (not a terminal);
  json   one JSON object per line (see `json_line`) at each whole percent, at most 5 a
         second, the last one always at 100 (for pipelines);
  none   nothing.
Everything goes to standard error, so standard output holds only the command's result.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from vhdfs.units import human

MODES = ("auto", "bar", "lines", "json", "none")
JSON_INTERVAL = 0.2  # seconds between two JSON lines (except the last)
BAR_INTERVAL = 0.1

_configured: str | None = None  # set by the command line; None: the `quiet` argument decides


def configure(mode: str | None) -> None:
    """How every Progress made from now on shows (one of MODES), whatever its `quiet`
    argument says; None goes back to `quiet` deciding (none, or auto)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: expected one of {', '.join(MODES)}")
    global _configured
    _configured = mode


def duration(seconds: float) -> str:
    """A short human duration: 45s, 2m05s, 1h02m."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """Report `done` of `total` bytes, as `configure` (or, when nothing is configured,
    `quiet`) says: see the module docstring."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 quiet: bool = False) -> None:
        self.label = label
        self.size = max(total, 0)  # as declared (may be 0: nothing to do)
        self.total = max(total, 1)  # for the arithmetic
        self.stream = stream or sys.stderr
        mode = _configured or ("none" if quiet else "auto")
        if mode == "auto":
            tty = self.stream.isatty()
            mode = "bar" if tty else "lines"
        self.mode = mode
        self.done = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_quarter = 0
        self._last_percent = -1

    @property
    def quiet(self) -> bool:
        return self.mode == "none"

    @property
    def tty(self) -> bool:  # the redrawn bar
        return self.mode == "bar"

    def advance(self, amount: int) -> None:
        self.update(self.done + amount)

    def update(self, done: int) -> None:
        self.done = done
        if self.mode == "none":
            return
        now = time.monotonic()
        if self.mode == "bar":
            if now - self._last_draw >= BAR_INTERVAL or done >= self.total:
                self._last_draw = now
                self._draw(now)
        elif self.mode == "json":
            percent = self._percent()
            if percent > self._last_percent and (
                    percent == 100 or now - self._last_draw >= JSON_INTERVAL):
                self._last_draw = now
                self._last_percent = percent
                self.stream.write(json.dumps(self.json_line(now)) + "\n")
                self.stream.flush()
        else:
            quarter = min(4, done * 4 // self.total)
            if quarter > self._last_quarter:
                self._last_quarter = quarter
                extra = self._extra()
                print(f"{self.label}: {quarter * 25}% ({human(done)} of {human(self.total)}; "
                      f"{extra + '; ' if extra else ''}{self._speed(now)})", file=self.stream)

    def _percent(self) -> int:
        return min(100, self.done * 100 // self.total)

    def rate(self, now: float) -> float:
        return self.done / max(now - self.started, 1e-6)

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far; None before anything is done, 0 when all is."""
        if self.done >= self.total:
            return 0.0
        rate = self.rate(now)
        return (self.total - self.done) / rate if self.done and rate > 0 else None

    def _speed(self, now: float) -> str:
        """The rate, and the ETA while the job runs: '120 MiB/s, ETA 2m05s'."""
        text = f"{human(int(self.rate(now)))}/s"
        eta = self.eta(now)
        if eta is not None and self.done < self.total:
            text += f", ETA {duration(eta)}"
        return text

    def json_line(self, now: float) -> dict[str, Any]:
        """One --progress json line: {"progress": label, "done", "total" (bytes),
        "percent" (0-100, whole), "elapsed", "rate" (bytes/s), "eta" (seconds, or null)}."""
        eta = self.eta(now)
        return {"progress": self.label, "done": min(self.done, self.size),
                "total": self.size, "percent": self._percent(),
                "elapsed": round(now - self.started, 3), "rate": round(self.rate(now)),
                "eta": None if eta is None else round(eta, 1)}

    def _extra(self) -> str:
        """More to say after the amount done (subclasses: bytes sent, skipped, ...)."""
        return ""

    def _draw(self, now: float) -> None:
        fraction = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(fraction * width)
        extra = self._extra()
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {fraction * 100:5.1f}% "
                          f"{human(self.done)}{', ' + extra if extra else ''} "
                          f"{self._speed(now)} \x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self._draw(time.monotonic())
            self.stream.write("\n")
        elif self.mode == "json":
            if self._last_percent < 100:
                self.update(self.total)
        elif self._last_quarter < 4:
            self.update(self.total)
