"""The mark of an unfinished upload in a blob's metadata, which readers check.

`vhdfs upload` sets `vhdfs_state=uploading` when it creates the blob and `complete` last of
all (vhdfs.upload). A blob still marked `uploading` was cut off: some of its pages, and
perhaps its footer, are missing. Opening it as an image says so, and how to finish it,
instead of reporting a damaged footer.
"""

from __future__ import annotations

import urllib.parse

from vhdfs.errors import RemoteError

STATE_KEY = "vhdfs_state"
UPLOADING = "uploading"
COMPLETE = "complete"


def refuse_incomplete(name: str, metadata: dict[str, str]) -> None:
    """Fail with the way to finish it when `metadata` marks an unfinished vhdfs upload."""
    if metadata.get(STATE_KEY) != UPLOADING:
        return
    source = urllib.parse.unquote(metadata.get("vhdfs_source", "")) or "its source"
    raise RemoteError(f"{name}: the upload into this blob is incomplete (vhdfs upload of {source} "
                      f"was interrupted: metadata {STATE_KEY}={UPLOADING}); run the same vhdfs "
                      "upload command with --resume to finish it")
