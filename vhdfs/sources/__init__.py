"""Sources: bytes at offsets of local files (Azure page blobs are vhdfs.azure.blob). No VHD knowledge here."""

from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile, open_local

__all__ = ["Source", "LocalFile", "open_local"]
