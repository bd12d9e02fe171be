"""The one error hierarchy of vhdfs.

Every failure a user can cause (bad input, missing parent, refused operation) is a
`VhdfsError`. The command line prints `str(error)` as one line on stderr and exits with
`error.exit_code`; nothing else is shown. Messages name the file, the field or offset, the
value found and what to do about it.

Exit codes (documented in the README):
  0  success
  1  the command ran and its answer is "no" (verify failed, check found problems) or a generic failure
  2  usage: bad arguments or option values
  3  image format: corrupt or unsupported structure in a VHD file
  4  chain: parent missing, identity mismatch, cycle, chain too deep
  5  I/O: a read or write of a file failed
  6  refused: the operation would overwrite or damage something (output exists, read-only target)
  7  mount: FUSE mount or unmount failed
  8  remote: blob storage access failed (credentials, not found, not a page blob)
  9  in use: another process holds the image (a mount, a commit, qemu); the message names it
"""

from __future__ import annotations

import os


class VhdfsError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(VhdfsError):
    """An argument or option value the command cannot use."""

    exit_code = 2


class FormatError(VhdfsError):
    """A VHD structure is corrupt, out of bounds or unsupported."""

    exit_code = 3

    def __init__(self, source: str, what: str, fix: str = "") -> None:
        text = f"{source}: {what}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)
        self.source = source
        self.what = what


class ChecksumError(FormatError):
    """A footer or header checksum does not match its contents.

    Read-only use turns this into a warning; anything that writes refuses the file.
    """


class ChainError(VhdfsError):
    """The parent chain cannot be assembled."""

    exit_code = 4


class ParentNotFound(ChainError):
    pass


class ParentMismatch(ChainError):
    pass


class ChainCycle(ChainError):
    pass


class ChainTooDeep(ChainError):
    pass


class ImageIOError(VhdfsError):
    """Reading or writing the bytes of a file failed (EIO, ENOSPC, truncated file)."""

    exit_code = 5

    def __init__(self, message: str, errno_value: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_value

    @classmethod
    def from_os_error(cls, source: str, action: str, offset: int, err: OSError) -> ImageIOError:
        reason = os.strerror(err.errno) if err.errno else str(err)
        return cls(f"{source}: {action} at offset {offset} failed: {reason}", err.errno)


class RefusedError(VhdfsError):
    """The operation would overwrite or damage something the user has not agreed to lose."""

    exit_code = 6


class MountError(VhdfsError):
    exit_code = 7


class RemoteError(VhdfsError):
    exit_code = 8
    status: int | None = None  # the HTTP status of the failed request, when one came back
    code: str = ""  # the storage service's error code (BlobNotFound ...), when it gave one


class ImageBusy(VhdfsError):
    """Another process holds a lock on the image that this use conflicts with
    (vhdfs.sources.locks): a writer, or readers where this command would write."""

    exit_code = 9

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class Interrupted(VhdfsError):
    exit_code = 130
