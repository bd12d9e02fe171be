"""Fixtures of the hostile-input suite: a hang guard and a record of every file opened."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import pytest

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # `open` is raised by open() and os.open() alike: proof that a path was never opened.
    if event == "open" and _opened is not None and args and isinstance(args[0], (str, bytes)):
        _opened.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


sys.addaudithook(_audit)


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Collect the path of every file opened inside the block."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


class Hang(Exception):
    """Raised by `deadline` in the test's own thread: the code under test did not return."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: a blocking open or read is interrupted by SIGALRM."""
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def opens_recorder():
    """`with opens_recorder() as opened:` lists every path opened inside the block."""
    return recording_opens


@pytest.fixture
def time_limit():
    """`with time_limit(seconds):` raises Hang when the block does not return in time."""
    return deadline
