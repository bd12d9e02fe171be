"""Failures of the guest writers (`vhdfs put`, `rm`, `mkdir`)."""

from __future__ import annotations

from vhdfs.guest.errors import FileSystemError, GuestError


class NotWritable(FileSystemError):
    """The volume's file system is one vhdfs does not write, or must not be written now
    (an ext journal that still needs recovery). Exit 3, as other file-system refusals."""


class ToolMissing(GuestError):
    """The file system's own tool is not installed; the message names the Debian package."""


class ToolFailed(GuestError):
    """A tool refused or failed one change. `state` says what that change left in the
    guest; the runner adds what the changes before it did."""

    def __init__(self, message: str, state: str = "") -> None:
        super().__init__(message)
        self.state = state


class WriteFailed(GuestError):
    """A guest write stopped part way: the one line says which change failed, the tool's
    own words, and the state the guest file system and the image are in."""
