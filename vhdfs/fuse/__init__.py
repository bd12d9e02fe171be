"""The FUSE view of a chain: `disk.raw`, `disk.vhd` and one file per partition.

A protocol adapter only (pyfuse3 + trio): `tree` decides which files the mount shows,
`ops` answers FUSE requests from the chain, `daemon` runs a mount from start to unmount,
`launch` puts it in the background and `unmount` takes it down. No VHD structure is read
here; everything goes through `vhdfs.chain.Chain`.
"""
