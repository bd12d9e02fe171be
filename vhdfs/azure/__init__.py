"""Azure blob storage: blob locations and credentials, remote parents, upload."""
