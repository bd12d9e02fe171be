"""Sources: bytes at offsets, from a local file or a remote blob. No VHD knowledge here."""

from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile, open_local

__all__ = ["Source", "LocalFile", "open_local"]
