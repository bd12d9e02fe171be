"""Guest views of a chain: partitions, file systems (read by The Sleuth Kit through pytsk3),
files, what the top layer changed, and the Azure-readiness verification.

Nothing here parses a file system by hand: pytsk3 does, over `VolumeImage`, which reads through
the chain (`Chain.read`), so any image the chain reader opens, local or remote, works.
"""
