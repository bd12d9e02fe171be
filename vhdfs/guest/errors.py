"""Failures of the guest tools (volumes, files, changes, verify)."""

from __future__ import annotations

from vhdfs.errors import UsageError, VhdfsError


class GuestError(VhdfsError):
    """A guest file or volume question that has no answer (exit 1)."""


class FileSystemError(GuestError):
    """A volume's file system is unknown, unsupported or damaged (exit 3, as other format errors)."""

    exit_code = 3


class GuestPathNotFound(GuestError):
    """The path does not exist on the volume(s) asked."""


class AmbiguousPath(UsageError):
    """The path exists on several volumes and no --volume was given."""


class NoSuchVolume(UsageError):
    """--volume names a volume the disk does not have, or one without a readable file system."""
