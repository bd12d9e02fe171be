"""The parent link a page blob records in its metadata: which blob is its parent.

`vhdfs set-parent` and `vhdfs upload` write it (`vhdfs_parent`: "CONTAINER/BLOB" on the child's
own account, or a full URL; `vhdfs_parent_id`: the parent's unique id in hex); the parent
search of blob layers (vhdfs.resolve.blob) reads it first.
"""

from __future__ import annotations

import urllib.parse

from vhdfs.azure.blob import BlobSource
from vhdfs.azure.location import BlobLocation, parse_blob_url
from vhdfs.errors import FormatError

LINK_KEY = "vhdfs_parent"
LINK_ID_KEY = "vhdfs_parent_id"


def link_value(child: BlobLocation, parent: BlobLocation) -> str:
    """What the child's metadata records: CONTAINER/BLOB on the same account, else the URL.

    A same-account link stays valid when the account is reached through another endpoint
    form (az://, another emulator port); metadata is ASCII, so names are percent-encoded.
    """
    if parent.same_account(child):
        return urllib.parse.quote(f"{parent.container}/{parent.blob}", safe="/")
    return parent.url


def parse_link(child: BlobLocation, value: str) -> BlobLocation:
    if value.lower().startswith(("https://", "http://")):
        return parse_blob_url(value).without_sas()
    container, _, blob = urllib.parse.unquote(value).partition("/")
    if not container or not blob:
        raise FormatError(child.display, f"metadata {LINK_KEY}={value!r} is not CONTAINER/BLOB "
                          "or a blob URL", "re-link with vhdfs set-parent CHILD PARENT")
    return child.sibling(blob, container)


def recorded_link(source: BlobSource) -> tuple[BlobLocation, str] | None:
    """The parent the blob's metadata names, and the value as recorded; None without one."""
    value = source.metadata.get(LINK_KEY)
    if not value:
        return None
    return parse_link(source.location, value), value
