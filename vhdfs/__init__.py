"""vhdfs: VHD differencing chains on Linux.

The code is a stack of layers, bottom up: base utilities (errors, units, quoting, secrets) ->
sources (bytes at offsets of local files) -> azure (the blob storage backend) -> image (the
layer contract) -> formats (vhd, vhdx, raw) -> chain (extent map) -> resolve (opening images
and finding parents) -> operations (create, convert, maintain, info, upload) -> views (fuse,
guest) -> cli. Import arrows point down only; docs/architecture.md draws the layers and says
what each owns, and `lint-imports` (run by scripts/test) enforces it.
"""

__version__ = "0.1.0"
