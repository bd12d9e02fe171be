"""vhdfs: VHD differencing chains on Linux.

Layers of the code, bottom up (see the design notes in the repository):
format (on-disk structures) -> sources (bytes at offsets) -> layer (one VHD) ->
chain (parents resolved, extent map) -> operations (create, convert, ...) -> views and CLI.
"""

__version__ = "0.1.0"
