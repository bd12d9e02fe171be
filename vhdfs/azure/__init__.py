"""Azure blob storage: blob locations and credentials, remote parents, upload.

Importing this package registers the page blob opener (vhdfs.sources.blob) with
vhdfs.resolve, so every command that opens an image also takes a blob spec.
"""

import vhdfs.sources.blob  # noqa: F401 - registers the opener for blob specs
