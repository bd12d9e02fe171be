"""vhdfs upload: a disk (or any file) to a page blob; the operation over the Azure backend.

`upload.py` runs one upload, `planning.py` says which page writes it makes, `watch.py` keeps
it from sending a source that changed while it was read. The storage itself (locations,
credentials, the client, page blobs, leases, Azure's disk rules) is vhdfs.azure's.
"""
