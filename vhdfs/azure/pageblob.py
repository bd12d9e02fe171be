"""Reading one page blob: its properties, ranged GETs pinned to one version, its page ranges.

The read side of `vhdfs.azure.blob.BlobSource`. Reads carry the ETag seen when the blob
was opened, so a blob rewritten under a running command fails with a clear message instead
of mixing two versions. A read is one ranged GET: the SDK's `download_blob` follows every
ranged GET of a page blob with a listing of the whole blob's page ranges (it wants them to
skip empty chunks of a whole-blob download), which doubled our requests and, on a
fragmented blob, cost the service more than the read itself.
"""

from __future__ import annotations

import bisect
import random
import threading
import time
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import DecodeError, IncompleteReadError, ServiceResponseError

# The request model of the SDK's generated REST layer (what its own download_blob passes):
# the public surface has no single ranged GET of a page blob (see the module's docstring).
from azure.storage.blob._generated.models import ModifiedAccessConditions

from vhdfs.azure.client import blob_client, remote_errors
from vhdfs.azure.credentials import Credential, credential_for
from vhdfs.azure.location import BlobLocation
from vhdfs.azure.stats import TRANSFER
from vhdfs.errors import RemoteError

SECTOR = 512
# Page ranges are listed per segment, when a read first touches it, so opening a large blob
# costs nothing and a fragmented one never needs one huge listing.
RANGE_SEGMENT = 1 << 30
# A response body cut off midway (the connection dropped after the headers) is asked for
# again, as the SDK's own downloader does; the pipeline's retries cover everything before.
BODY_ATTEMPTS = 4
BODY_BACKOFF = 0.2

Ranges = list[tuple[int, int]]


class SegmentStore(Protocol):
    """Where listed page ranges may be kept between commands (vhdfs.azure.blockcache)."""

    def get_ranges(self, segment: int) -> Ranges | None: ...

    def put_ranges(self, segment: int, ranges: Ranges) -> None: ...


class PageBlob:
    def __init__(self, loc: BlobLocation, credential: Credential | None = None) -> None:
        self.location = loc
        self.name = loc.display
        self.credential = credential or credential_for(loc)
        self.secrets = self.credential.secrets
        self.client = blob_client(loc, self.credential)
        self._segments: dict[int, tuple[list[int], Ranges]] = {}  # starts, ranges
        self._segment_lock = threading.Lock()
        self.segment_store: SegmentStore | None = None
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
        """Exactly `length` bytes at `offset`: one ranged GET (retried by the client)."""
        action = f"reading {length} bytes at offset {offset}"
        with self.errors(action):
            for attempt in range(1, BODY_ATTEMPTS + 1):
                chunks = self.client._client.blob.download(  # noqa: SLF001 - see the docstring
                    range=f"bytes={offset}-{offset + length - 1}",
                    modified_access_conditions=ModifiedAccessConditions(if_match=self.etag),
                    decompress=False)
                try:
                    data = b"".join(chunks)
                except (IncompleteReadError, DecodeError, ServiceResponseError):
                    if attempt == BODY_ATTEMPTS:
                        raise
                    TRANSFER.add_retry()
                    time.sleep(BODY_BACKOFF * attempt * random.uniform(0.8, 1.2))
                    continue
                break
        if len(data) != length:
            raise RemoteError(f"{self.name}: reading {length} bytes at offset {offset} returned "
                              f"{len(data)}; the blob is shorter than it said (rewritten?)")
        return data

    def _segment(self, index: int) -> tuple[list[int], Ranges]:
        with self._segment_lock:
            known = self._segments.get(index)
            if known is not None:
                return known
            ranges = self.segment_store.get_ranges(index) if self.segment_store else None
            if ranges is None:
                start = index * RANGE_SEGMENT
                length = min(RANGE_SEGMENT, self.size - start)
                with self.errors(f"listing its page ranges at offset {start}"):
                    ranges = [(r.start, r.end + 1) for r in self.client.list_page_ranges(
                        offset=start, length=length, etag=self.etag,
                        match_condition=MatchConditions.IfNotModified) if not r.cleared]
                if self.segment_store is not None:
                    self.segment_store.put_ranges(index, ranges)
            known = self._segments[index] = ([lo for lo, _ in ranges], ranges)
            return known

    def data_ranges(self, start: int, end: int) -> Ranges:
        """Ranges in [start, end) that hold written pages; everything else reads as zeros."""
        out: Ranges = []
        if end <= start:
            return out
        for index in range(start // RANGE_SEGMENT, (end - 1) // RANGE_SEGMENT + 1):
            starts, ranges = self._segment(index)
            at = max(0, bisect.bisect_right(starts, start) - 1)
            for i in range(at, len(ranges)):
                lo, hi = ranges[i]
                if lo >= end:
                    break
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
