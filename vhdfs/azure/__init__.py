"""Azure blob storage, the backend: blob locations and credentials, the client, page blobs
(read through a cached BlobSource), leases, and Azure's rules for disks. The upload operation
over it is vhdfs.upload."""
