"""Reading one page blob: its properties, ranged GETs pinned to one version, its page ranges.

The read side of `vhdfs.azure.blob.BlobSource`. Reads carry the ETag seen when the blob
was opened, so a blob rewritten under a running command fails with a clear message instead
of mixing two versions.
"""

from __future__ import annotations

import threading
from typing import Any

from azure.core import MatchConditions

from vhdfs.azure.client import blob_client, remote_errors
from vhdfs.azure.credentials import Credential, credential_for
from vhdfs.azure.location import BlobLocation
from vhdfs.errors import RemoteError

SECTOR = 512
# Page ranges are listed per segment, when a read first touches it, so opening a large blob
# costs nothing and a fragmented one never needs one huge listing.
RANGE_SEGMENT = 1 << 30


class PageBlob:
    def __init__(self, loc: BlobLocation, credential: Credential | None = None) -> None:
        self.location = loc
        self.name = loc.display
        self.credential = credential or credential_for(loc)
        self.secrets = self.credential.secrets
        self.client = blob_client(loc, self.credential)
        self._segments: dict[int, list[tuple[int, int]]] = {}
        self._segment_lock = threading.Lock()
        self.properties: Any = None
        self.size = 0
        self.etag = ""
        self.metadata: dict[str, str] = {}

    def errors(self, action: str):
        return remote_errors(self.name, action, self.secrets)

    def open(self) -> PageBlob:
        """Read the properties; refuse anything that is not a page blob."""
        try:
            with self.errors("reading its properties"):
                props = self.client.get_blob_properties()
        except RemoteError as exc:
            if self.credential.kind != "token" or exc.status:
                raise
            # azure-identity found no identity: a public container may still be read.
            anonymous = Credential(None, (), "anonymous")
            client = blob_client(self.location, anonymous)
            try:
                with self.errors("reading its properties"):
                    props = client.get_blob_properties()
            except RemoteError:
                raise exc from None
            self.client, self.credential = client, anonymous
        # The SDK's BlobType enum, or (older versions) the bare string, which has no `value`.
        kind = str(getattr(props.blob_type, "value", props.blob_type))
        if kind != "PageBlob":
            raise RemoteError(f"{self.name}: is a {kind.replace('Blob', '').lower()} blob, not a "
                              "page blob: VHD disks in Azure are page blobs (upload a disk with "
                              "vhdfs upload)")
        self.properties = props
        self.size = props.size
        self.etag = props.etag
        self.metadata = dict(props.metadata or {})
        return self

    def fetch(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes at `offset` (one ranged GET, retried by the client)."""
        with self.errors(f"reading {length} bytes at offset {offset}"):
            stream = self.client.download_blob(
                offset=offset, length=length, max_concurrency=1, etag=self.etag,
                match_condition=MatchConditions.IfNotModified)
            data = stream.readall()
        if len(data) != length:
            raise RemoteError(f"{self.name}: reading {length} bytes at offset {offset} returned "
                              f"{len(data)}; the blob is shorter than it said (rewritten?)")
        return data

    def _segment(self, index: int) -> list[tuple[int, int]]:
        with self._segment_lock:
            known = self._segments.get(index)
            if known is not None:
                return known
            start = index * RANGE_SEGMENT
            length = min(RANGE_SEGMENT, self.size - start)
            with self.errors(f"listing its page ranges at offset {start}"):
                ranges = [(r.start, r.end + 1) for r in self.client.list_page_ranges(
                    offset=start, length=length, etag=self.etag,
                    match_condition=MatchConditions.IfNotModified) if not r.cleared]
            self._segments[index] = ranges
            return ranges

    def data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Ranges in [start, end) that hold written pages; everything else reads as zeros."""
        out: list[tuple[int, int]] = []
        if end <= start:
            return out
        for index in range(start // RANGE_SEGMENT, (end - 1) // RANGE_SEGMENT + 1):
            for lo, hi in self._segment(index):
                lo, hi = max(lo, start), min(hi, end)
                if lo < hi:
                    if out and out[-1][1] == lo:
                        out[-1] = (out[-1][0], hi)
                    else:
                        out.append((lo, hi))
        return out

    def close(self) -> None:
        # The shared transport stays open for other clients; nothing else to release.
        self.client = None  # type: ignore[assignment]
