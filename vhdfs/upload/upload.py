"""vhdfs upload: a disk (or any file) to a page blob, sparse, parallel, resumable, verified.

The order of one upload:
  1. open the source and check Azure's disk rules (before anything is sent); a file of a
     writable vhdfs mount is refused (a writer may change it while it is read), and the
     size, times and inode of every local file read are recorded (watch.py);
  2. look at the destination: refuse to replace it without --overwrite; with --resume,
     check that its metadata describes an interrupted upload of the same source;
  3. take a lease (held, renewed, for the whole upload: a second uploader fails at once);
     create the page blob (or, with --patch-base, copy the base blob onto it server-side);
  4. send the writes from vhdfs.upload.planning, --concurrency at a time, each at most
     4 MiB, 512-byte aligned, with a Content-MD5 (validate_content); --resume skips writes
     whose pages the blob already holds (its page ranges);
  5. after the last read, check that no source file changed while it was read (else fail,
     leaving the blob marked incomplete: --resume then starts over); --verify: read every
     written range back and compare digests;
  6. set the metadata with the source's size, time and digest, last, as the completion mark,
     and release the lease.

What goes up (see planning.py): the flat disk of a chain as a fixed VHD (only what holds
data, then a footer that keeps the top layer's unique id and timestamp, so a differencing
child of it can later be checked against the blob); --as-is the file itself; with
--patch-base only what the child layers hold, on top of a copy of their base.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vhdfs.azure.client import blob_client, remote_errors, translate
from vhdfs.azure.credentials import Credential, credential_for, parse_location
from vhdfs.azure.lease import LeaseKeeper
from vhdfs.azure.location import BlobLocation, looks_remote
from vhdfs.azure.rules import check_disk, check_page_blob
from vhdfs.chain import Chain
from vhdfs.create import fixed_footer
from vhdfs.errors import (
    FormatError,
    ImageIOError,
    Interrupted,
    ParentMismatch,
    RefusedError,
    RemoteError,
    UsageError,
    VhdfsError,
)
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions, open_chain, open_layer, open_source
from vhdfs.secrets import scrub, without_query
from vhdfs.sources.local import LocalFile
from vhdfs.units import human
from vhdfs.upload.planning import (
    MAX_WRITE,
    RangeDigest,
    Write,
    file_writes,
    flat_writes,
    patch_writes,
    range_hash,
)
from vhdfs.upload.watch import RESTART, WatchedFiles, pause_for_test
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer, format_unique_id
from vhdfs.vhd.layer import Layer

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
STATE_KEY = "vhdfs_state"
MODES = ("flat", "as-is", "patch")


@dataclass
class UploadOptions:
    concurrency: int = DEFAULT_CONCURRENCY
    resume: bool = False
    overwrite: bool = False
    verify: bool = False
    as_is: bool = False
    patch_base: str | None = None
    open_options: OpenOptions = field(default_factory=OpenOptions)
    quiet: bool = False


@dataclass
class UploadReport:
    source: str
    dest: str
    mode: str
    blob_size: int
    sent: int = 0  # bytes of page data sent
    cleared: int = 0  # bytes cleared (patch: zeros the child holds over base data)
    present: int = 0  # bytes skipped because the blob already held them (--resume)
    writes: int = 0
    digest: str = ""
    seconds: float = 0.0
    verified: bool = False
    already_complete: bool = False
    parent_link: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Bytes of the blob that were never sent (zeros, or already present)."""
        return max(0, self.blob_size - self.sent)


@dataclass
class SourcePlan:
    name: str
    mode: str
    blob_size: int
    fingerprint: str
    source_size: int
    source_mtime: float
    writes: Callable[[Progress | None], Iterator[Write]]
    close: Callable[[], None]
    top: Layer | None = None
    base: BlobLocation | None = None
    base_id: bytes = b""
    watched: WatchedFiles = field(default_factory=WatchedFiles)


# ------------------------------------------------------------------ the source
def _file_facts(source: Any) -> tuple[int, float, str]:
    """Size, mtime and a stable version tag of a layer's source (local file or blob)."""
    path = getattr(source, "path", None)
    if path is not None:
        info = os.stat(path)
        return info.st_size, info.st_mtime, f"{info.st_size}:{info.st_mtime_ns}"
    blob = getattr(source, "blob", None)
    if blob is not None:
        modified = blob.properties.last_modified
        return blob.size, modified.timestamp(), f"{blob.size}:{blob.etag}"
    return source.size(), 0.0, str(source.size())


def _fingerprint(mode: str, parts: list[str]) -> str:
    return hashlib.sha256("\n".join([mode, *parts]).encode()).hexdigest()[:32]


def upload_footer(chain: Chain, fingerprint: str, mtime: float) -> bytes:
    """The fixed-VHD footer of the uploaded disk: the top layer's unique id and timestamp
    (a raw source gets an id derived from its fingerprint), so the blob can stand in for the
    top layer as the parent of a later child (--patch-base, set-parent)."""
    top = chain.top
    unique_id = getattr(top, "unique_id", b"") or uuid.UUID(
        bytes=hashlib.sha256(fingerprint.encode()).digest()[:16], version=4).bytes
    footer = fixed_footer(chain.size, unique_id=unique_id)
    own = getattr(top, "footer", None)
    stamp = own.timestamp if own is not None else max(0, int(mtime) - 946684800)
    return footer.copy(timestamp=stamp & 0xFFFFFFFF).build()


def _plan_flat(spec: str, options: UploadOptions) -> SourcePlan:
    watched = WatchedFiles.before_opening(spec)
    chain = open_chain(spec, options.open_options, allow_raw=True)
    try:
        watched.add_layers(chain.layers)
        check_disk(spec, chain.size)
        facts = [_file_facts(layer.source) for layer in chain.layers]
        parts = [f"{getattr(layer, 'unique_id', b'').hex()}:{tag}"
                 for layer, (_, _, tag) in zip(chain.layers, facts, strict=True)]
        fingerprint = _fingerprint("flat", parts)
        footer = upload_footer(chain, fingerprint, facts[0][1])
    except BaseException:
        chain.close()
        raise
    return SourcePlan(spec, "flat", chain.size + FOOTER_SIZE, fingerprint, facts[0][0], facts[0][1],
                      lambda progress: flat_writes(chain, footer, progress), chain.close,
                      top=chain.top, watched=watched)


def _plan_as_is(spec: str) -> SourcePlan:
    if looks_remote(spec):
        raise UsageError(f"{spec}: --as-is uploads a local file; this is a blob")
    watched = WatchedFiles.before_opening(spec)
    source = LocalFile(spec)
    try:
        watched.add_source(source)
        size, mtime, tag = _file_facts(source)
        check_page_blob(spec, size)
        top = None
        try:
            top = open_layer(source, OpenOptions())
        except VhdfsError:
            top = None  # any file may go up as it is; only a VHD gets a parent link
    except BaseException:
        source.close()
        raise
    fingerprint = _fingerprint("as-is", [tag])
    return SourcePlan(spec, "as-is", size, fingerprint, size, mtime,
                      lambda progress: file_writes(source, progress), source.close, top=top,
                      watched=watched)


def _read_base_footer(base: Any) -> Footer:
    raw = base.fetch(base.size - FOOTER_SIZE, FOOTER_SIZE)
    return Footer.parse(raw, base.name, base.size - FOOTER_SIZE)


def _plan_patch(spec: str, base_spec: str, options: UploadOptions) -> SourcePlan:
    from vhdfs.azure.pageblob import PageBlob

    base_loc = parse_location(base_spec)
    base = PageBlob(base_loc).open()
    try:
        footer = _read_base_footer(base)
    except FormatError as exc:
        raise FormatError(base.name, f"no fixed-VHD footer at its end: {exc.what}",
                          "--patch-base needs a disk blob made by vhdfs upload (not --as-is)") \
            from None
    if footer.disk_type != DiskType.FIXED:
        raise UsageError(f"{base.name}: is a {DiskType(footer.disk_type).name.lower()} VHD stored "
                         "as it is (--as-is); --patch-base needs a fixed-VHD disk blob (upload "
                         "the base without --as-is)")
    base_disk = base.size - FOOTER_SIZE
    watched = WatchedFiles.before_opening(spec)
    top_source = open_source(spec)
    try:
        top = open_layer(top_source, options.open_options)
    except BaseException:
        top_source.close()
        raise
    if not top.is_differencing:
        top.close()
        raise UsageError(f"{spec}: is a {top.disk_type.name.lower()} disk, not a differencing "
                         "child; --patch-base uploads a child over the blob of its parent")
    if top.parent_id == footer.unique_id:
        chain, upto = Chain([top]), 1
    else:
        top.close()
        chain = open_chain(spec, options.open_options)
        ids = [layer.unique_id for layer in chain.layers]
        if footer.unique_id not in ids[1:]:
            chain.close()
            raise ParentMismatch(
                f"{spec}: expects parent id {format_unique_id(top.parent_id or b'')} "
                f"({top.parent_name or 'no name'}), but the base blob {base.name} has unique id "
                f"{format_unique_id(footer.unique_id)}; give the blob uploaded from that parent "
                "(a plain vhdfs upload keeps the disk's unique id)")
        upto = ids.index(footer.unique_id, 1)
    try:
        if chain.size != base_disk:
            raise ParentMismatch(f"{spec}: is a disk of {chain.size} bytes but the base blob "
                                 f"{base.name} holds {base_disk} bytes of disk; the sizes must agree")
        check_disk(spec, chain.size)
        watched.add_layers(chain.layers[:upto])
        facts = [_file_facts(chain.layers[i].source) for i in range(upto)]
        parts = [f"{chain.layers[i].unique_id.hex()}:{facts[i][2]}" for i in range(upto)]
        fingerprint = _fingerprint("patch", [*parts, footer.unique_id.hex(), base.etag])
        new_footer = upload_footer(chain, fingerprint, facts[0][1])
    except BaseException:
        chain.close()
        raise
    return SourcePlan(spec, "patch", chain.size + FOOTER_SIZE, fingerprint, facts[0][0],
                      facts[0][1], lambda progress: patch_writes(chain, upto, new_footer, progress),
                      chain.close, top=chain.top, base=base_loc, base_id=footer.unique_id,
                      watched=watched)


def plan_source(spec: str, options: UploadOptions) -> SourcePlan:
    if options.as_is:
        return _plan_as_is(spec)
    if options.patch_base:
        return _plan_patch(spec, options.patch_base, options)
    return _plan_flat(spec, options)


# ------------------------------------------------------------------ sending
class Sender:
    """Page writes, `concurrency` at a time, at most 2 x concurrency buffered."""

    def __init__(self, client: Any, lease: Any, name: str, secrets: tuple[str, ...],
                 concurrency: int, present: list[tuple[int, int]]) -> None:
        self.client = client
        self.lease = lease
        self.name = name
        self.secrets = secrets
        self.present = present
        self._starts = [lo for lo, _ in present]
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="vhdfs-upload")
        self._slots = threading.Semaphore(concurrency * 2)
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self.sent = 0
        self.cleared = 0
        self.present_bytes = 0
        self.queued = 0
        self.writes = 0

    def _covered(self, write: Write) -> bool:
        i = bisect.bisect_right(self._starts, write.offset) - 1
        return i >= 0 and self.present[i][1] >= write.end

    def submit(self, write: Write) -> None:
        if self.error is not None:
            raise self.error
        if write.data is not None and (write.length > MAX_WRITE or write.offset % 512 or
                                       write.length % 512):
            raise RemoteError(f"internal: refusing a page write of {write.length} bytes at "
                              f"{write.offset} (Azure takes at most 4 MiB, 512-byte aligned)")
        if write.data is not None and self.present and self._covered(write):
            self.present_bytes += write.length
            return
        self._slots.acquire()
        self.queued += write.length
        future = self._pool.submit(self._send, write)
        future.add_done_callback(lambda _: self._slots.release())

    def _send(self, write: Write) -> None:
        if self.error is not None:
            return
        try:
            where = f"writing {write.length} bytes at offset {write.offset}"
            with remote_errors(self.name, where, self.secrets):
                if write.data is None:
                    self.client.clear_page(offset=write.offset, length=write.length,
                                           lease=self.lease)
                else:
                    self.client.upload_page(write.data, offset=write.offset, length=write.length,
                                            lease=self.lease, validate_content=True)
        except BaseException as exc:
            with self._lock:
                self.error = self.error or exc
            return
        with self._lock:
            self.writes += 1
            if write.data is None:
                self.cleared += write.length
            else:
                self.sent += write.length

    def finish(self) -> None:
        self._pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        with self._lock:
            self.error = self.error or Interrupted("upload interrupted")
        self._pool.shutdown(wait=True, cancel_futures=True)


class UploadProgress(Progress):
    """The progress bar with bytes sent and skipped."""

    def __init__(self, label: str, total: int, counts: Callable[[], tuple[int, int, int]],
                 quiet: bool = False) -> None:
        super().__init__(label, total, quiet=quiet)
        self.counts = counts
        self.sending_done = False

    def complete(self) -> None:
        """Every write has been answered: now (and only now) show 100%."""
        self.sending_done = True
        self.update(self.total)
        self.finish()

    def _extra(self) -> str:
        sent, queued, present = self.counts()
        skipped = max(0, self.done - queued - present)
        text = f"sent {human(sent)}, skipped {human(skipped)}"
        return text + (f" ({human(present)} already there)" if present else "")

    def update(self, done: int) -> None:
        if not self.sending_done:
            done = min(done, self.total - 1)  # reading is done before the last writes are
        super().update(done)


# ------------------------------------------------------------------ the destination
def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_name(spec: str) -> str:
    """How the metadata names the source: a local file by its name, a blob by its URL
    without the query string (anyone who can read the blob reads its metadata: a SAS there
    would hand them the source)."""
    if looks_remote(spec):
        return urllib.parse.quote(without_query(spec), safe=":/")
    return urllib.parse.quote(os.path.basename(spec.rstrip("/")) or spec)


def start_metadata(plan: SourcePlan) -> dict[str, str]:
    meta = {
        STATE_KEY: "uploading",
        "vhdfs_mode": plan.mode,
        "vhdfs_source": source_name(plan.name),
        "vhdfs_source_size": str(plan.source_size),
        "vhdfs_source_mtime": _iso(plan.source_mtime),
        "vhdfs_source_id": plan.fingerprint,
    }
    if plan.base is not None:
        meta["vhdfs_base"] = urllib.parse.quote(plan.base.url, safe=":/")
        meta["vhdfs_base_id"] = plan.base_id.hex()
    return meta


def _check_resumable(dest: str, props: Any, plan: SourcePlan) -> str:
    """'uploading' or 'complete' when `props` is an upload of this very source, else refuse."""
    kind = str(getattr(props.blob_type, "value", props.blob_type))
    meta = dict(props.metadata or {})
    state = meta.get(STATE_KEY)
    fix = "use --overwrite to start over"
    if kind != "PageBlob":
        raise RefusedError(f"{dest}: is a {kind}, not an interrupted upload; {fix}")
    if state not in ("uploading", "complete"):
        raise RefusedError(f"{dest}: has no vhdfs upload metadata ({STATE_KEY}), so it is not an "
                           f"interrupted vhdfs upload; {fix}")
    if state == "uploading" and meta.get("vhdfs_source_id") == RESTART and \
            meta.get("vhdfs_mode") == plan.mode:
        return "restart"  # its source changed while it was read: what it holds is of no use
    if props.size != plan.blob_size:
        raise RefusedError(f"{dest}: is {props.size} bytes, but this upload makes {plan.blob_size}; "
                           f"it was started from another source; {fix}")
    if meta.get("vhdfs_mode") != plan.mode or meta.get("vhdfs_source_id") != plan.fingerprint:
        was = urllib.parse.unquote(meta.get("vhdfs_source", "?"))
        raise RefusedError(
            f"{dest}: holds an upload of {was} (mode {meta.get('vhdfs_mode', '?')}, size "
            f"{meta.get('vhdfs_source_size', '?')}, time {meta.get('vhdfs_source_mtime', '?')}), "
            f"not of this {plan.mode} source as it is now (changed since?); {fix}")
    return state


def _page_ranges(client: Any, name: str, secrets: tuple[str, ...], size: int
                 ) -> list[tuple[int, int]]:
    """Every written page range of the blob (listed per 1 GiB, which any service answers)."""
    out: list[tuple[int, int]] = []
    segment = 1 << 30
    with remote_errors(name, "listing its page ranges", secrets):
        for start in range(0, size, segment):
            for r in client.list_page_ranges(offset=start, length=min(segment, size - start)):
                if r.cleared:
                    continue
                lo, hi = r.start, r.end + 1
                if out and out[-1][1] >= lo:
                    out[-1] = (out[-1][0], max(out[-1][1], hi))
                else:
                    out.append((lo, hi))
    return out


def _copy_base(client: Any, dest: str, secrets: tuple[str, ...], base: BlobLocation,
               metadata: dict[str, str], lease: Any, progress_label: str, quiet: bool) -> None:
    """Server-side copy of the base blob onto the destination (Copy Blob, same account)."""
    source_url = base.url_with_sas
    with remote_errors(dest, f"copying {base.display}", secrets + ((base.sas,) if base.sas else ())):
        client.start_copy_from_url(source_url, metadata=metadata, destination_lease=lease)
        progress: Progress | None = None
        while True:
            copy = client.get_blob_properties(lease=lease).copy
            status = str(getattr(copy, "status", "") or "")
            if status == "success":
                break
            if status != "pending":
                why = getattr(copy, "status_description", "") or status
                raise RemoteError(f"{dest}: the server-side copy of {base.display} failed ({why}); "
                                  "the base must be readable by the destination account (same "
                                  "account, or a SAS in the base URL)")
            done, _, total = (getattr(copy, "progress", "") or "0/0").partition("/")
            if total.isdigit() and int(total):
                progress = progress or Progress(progress_label, int(total), quiet=quiet)
                progress.update(int(done))
            time.sleep(0.5)
        if progress is not None:
            progress.finish()


def _verify(client: Any, name: str, secrets: tuple[str, ...], digest: RangeDigest,
            concurrency: int, whole_blob: int | None) -> None:
    """Read every written range back; compare with what was sent. With `whole_blob` (size),
    also check that the blob holds no page outside those ranges."""
    ranges = digest.ranges or []

    def read_back(item: tuple[int, int, bytes]) -> bytes:
        offset, length, _ = item
        with remote_errors(name, f"reading back {length} bytes at offset {offset}", secrets):
            if length <= MAX_WRITE:
                data = client.download_blob(offset=offset, length=length, max_concurrency=1,
                                            validate_content=True).readall()
            else:  # a long clear: read in pieces
                data = b"".join(client.download_blob(
                    offset=at, length=min(MAX_WRITE, offset + length - at), max_concurrency=1,
                    validate_content=True).readall() for at in range(offset, offset + length,
                                                                     MAX_WRITE))
        return range_hash(Write(offset, length, data))

    with ThreadPoolExecutor(concurrency, thread_name_prefix="vhdfs-verify") as pool:
        for item, got in zip(ranges, pool.map(read_back, ranges), strict=True):
            if got != item[2]:
                offset, length, _ = item
                raise RemoteError(f"{name}: verification failed: the {length} bytes at offset "
                                  f"{offset} read back differ from what was sent; upload again "
                                  "with --overwrite")
    if whole_blob is not None:
        written = sorted((o, o + n) for o, n, _ in ranges)
        starts = [lo for lo, _ in written]
        for lo, hi in _page_ranges(client, name, secrets, whole_blob):
            pos = lo
            while pos < hi:
                i = bisect.bisect_right(starts, pos) - 1
                if i < 0 or written[i][1] <= pos:
                    raise RemoteError(f"{name}: verification failed: the blob holds data at "
                                      f"offset {pos} that this upload did not write; upload "
                                      "again with --overwrite")
                pos = written[i][1]


def _find_link(dest: BlobLocation, credential: Credential, top: Layer | None,
               options: OpenOptions) -> tuple[str, str]:
    """For a differencing VHD uploaded --as-is: its parent in the same container, if there."""
    if top is None or not top.is_differencing:
        return "", ""
    from vhdfs.azure.blob import BlobSource
    from vhdfs.azure.parents import find_blob_parent, link_value

    try:
        with BlobSource(dest, credential) as uploaded:
            child = open_layer(uploaded, options)
            parent, link = find_blob_parent(uploaded, child, OpenOptions(
                size_rule=options.size_rule), {uploaded.identity()})
            parent_loc = parent.source.location
            parent.close()
    except VhdfsError as exc:
        return "", f"parent not linked yet ({exc})"
    return link_value(dest, parent_loc), f"parent linked: {parent_loc.display} (by {link.found_by})"


def upload(source: str, dest_spec: str, options: UploadOptions,
           on_note: Callable[[str], None] | None = None) -> UploadReport:
    if not looks_remote(dest_spec):
        raise UsageError(f"{dest_spec}: DEST must be a page blob: https://ACCOUNT.blob.core."
                         "windows.net/CONTAINER/BLOB, an Azurite URL or az://CONTAINER/BLOB")
    if options.resume and options.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the upload, or "
                         "start it over")
    if options.as_is and options.patch_base:
        raise UsageError("--as-is and --patch-base exclude each other")
    if not 1 <= options.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {options.concurrency}: use 1 to {MAX_CONCURRENCY}")
    note = on_note or (lambda text: None)
    dest = parse_location(dest_spec)
    if options.patch_base and parse_location(options.patch_base).identity() == dest.identity():
        raise UsageError(f"{dest.display}: is the base blob itself; upload to a new blob name")
    started = time.monotonic()
    plan = plan_source(source, options)
    try:
        return _upload(plan, dest, options, note, started)
    finally:
        plan.close()


def _upload(plan: SourcePlan, dest: BlobLocation, options: UploadOptions,
            note: Callable[[str], None], started: float) -> UploadReport:
    credential = credential_for(dest)
    secrets = credential.secrets
    name = dest.display
    client = blob_client(dest, credential)
    report = UploadReport(scrub(plan.name), name, plan.mode, plan.blob_size)
    from azure.core.exceptions import ResourceNotFoundError

    try:
        props = client.get_blob_properties()
    except ResourceNotFoundError:
        props = None
    except Exception as exc:
        raise translate(exc, name, "reading its properties", secrets) from None
    if props is not None and not (options.overwrite or options.resume):
        raise RefusedError(f"{name}: already exists; pass --overwrite to replace it, or --resume "
                           "to continue an interrupted upload of the same source")
    resuming = options.resume and props is not None
    if options.resume and props is None:
        note(f"{name}: nothing to resume (no such blob); starting a new upload")
    if resuming:
        _check_resumable(name, props, plan)  # refuse early, before waiting for any lease
    keeper = LeaseKeeper(client, name, secrets)
    metadata = start_metadata(plan)
    try:
        if props is None:
            with remote_errors(name, "creating the page blob", secrets):
                client.create_page_blob(size=plan.blob_size, metadata=metadata,
                                        if_none_match="*")
            lease = keeper.acquire()
        else:
            lease = keeper.acquire(wait_for_expiry=resuming, on_wait=lambda: note(
                f"{name}: waiting for the lease of the interrupted upload to expire"))
            state = ""
            if resuming:
                with remote_errors(name, "reading its properties", secrets):
                    props = client.get_blob_properties(lease=lease)
                state = _check_resumable(name, props, plan)
                if state == "restart":
                    note(f"{name}: the last upload saw its source change while reading it; "
                         "starting over")
                    resuming = False
            if not resuming:
                with remote_errors(name, "replacing it with a new page blob", secrets):
                    client.create_page_blob(size=plan.blob_size, metadata=metadata, lease=lease)
                state = "uploading"
            if resuming and state == "complete":
                report.already_complete = True
        if plan.mode == "patch" and not report.already_complete:
            copy = getattr(props, "copy", None) if resuming else None
            copied = copy is not None and str(copy.status or "") == "success" and \
                (copy.source or "").split("?")[0] == plan.base.url
            if not copied:
                _copy_base(client, name, secrets, plan.base, metadata, lease,
                           f"copy {plan.base.display}", options.quiet)
        present: list[tuple[int, int]] = []
        if resuming and plan.mode != "patch" and not report.already_complete:
            # Pages the interrupted upload already wrote (a patch re-sends the child's writes:
            # the copied base's pages say nothing about them).
            present = _page_ranges(client, name, secrets, plan.blob_size)
        sender = Sender(client, lease, name, secrets, options.concurrency, present)
        digest = RangeDigest(keep_ranges=options.verify)
        progress = UploadProgress(f"upload {name}", plan.blob_size,
                                  lambda: (sender.sent + sender.cleared, sender.queued,
                                           sender.present_bytes),
                                  quiet=options.quiet)
        try:
            for write in plan.writes(progress):
                digest.add(write)
                if not report.already_complete:
                    keeper.check()
                    sender.submit(write)
                    pause_for_test()
            sender.finish()
        except KeyboardInterrupt:
            sender.abort()
            raise
        except RemoteError as exc:
            sender.abort()
            raise RemoteError(f"{exc}; the upload is incomplete: run the same command with "
                              "--resume to continue it") from None
        except BaseException:
            sender.abort()
            raise
        changed = plan.watched.changes()  # after the last read, before anything is marked
        if changed:
            _refuse_changed(client, name, secrets, metadata, lease, changed, report)
        progress.complete()
        report.sent, report.cleared = sender.sent, sender.cleared
        report.present, report.writes = sender.present_bytes, sender.writes
        report.digest = digest.hexdigest()
        if report.already_complete:
            recorded = (props.metadata or {}).get("vhdfs_digest", "")
            if recorded and recorded != report.digest:
                raise RefusedError(f"{name}: is marked complete with digest {recorded}, but the "
                                   f"source now gives {report.digest}; use --overwrite")
        if options.verify:
            _verify(client, name, secrets, digest, options.concurrency,
                    None if plan.mode == "patch" else plan.blob_size)
            report.verified = True
        final = dict(metadata)
        if plan.mode == "as-is":
            link, said = _find_link(dest, credential, plan.top, options.open_options)
            if said:
                report.notes.append(said)
            if link:
                from vhdfs.azure.parents import LINK_ID_KEY, LINK_KEY

                final[LINK_KEY] = link
                final[LINK_ID_KEY] = (plan.top.parent_id or b"").hex()
                report.parent_link = link
        final.update({STATE_KEY: "complete", "vhdfs_digest": report.digest,
                      "vhdfs_data_bytes": str(digest.data_bytes), "vhdfs_completed": _now_iso()})
        if not report.already_complete:
            # The completion mark: set last, only once everything above succeeded.
            with remote_errors(name, "setting the completion metadata", secrets):
                client.set_blob_metadata(final, lease=lease)
    finally:
        keeper.release()
    report.seconds = time.monotonic() - started
    return report


def _refuse_changed(client: Any, name: str, secrets: tuple[str, ...], metadata: dict[str, str],
                    lease: Any, changed: str, report: UploadReport) -> None:
    """A source file changed while it was read: the blob is not marked complete (and, when it
    was being written, marked so that --resume starts over instead of keeping torn pages)."""
    if report.already_complete:
        raise ImageIOError(f"{changed} while it was read to check the finished upload {name}; "
                           "the blob was not changed; run the command again once nothing "
                           "writes the source")
    with remote_errors(name, "marking the upload to start over", secrets):
        client.set_blob_metadata({**metadata, "vhdfs_source_id": RESTART}, lease=lease)
    raise ImageIOError(f"{changed} while the upload read it, so what was sent mixes old and new "
                       f"data: {name} was not marked complete; once nothing writes the source, "
                       "run the same command with --resume (it starts over)")


def describe(report: UploadReport) -> str:
    rate = report.sent / max(report.seconds, 1e-6)
    if report.already_complete:
        text = f"{report.dest}: already complete (digest {report.digest})"
    else:
        text = (f"uploaded {report.source} to {report.dest} ({report.mode}, blob "
                f"{report.blob_size} bytes): sent {human(report.sent)} in {report.writes} "
                f"writes, skipped {human(report.skipped)}")
        if report.present:
            text += f" ({human(report.present)} already there)"
        if report.cleared:
            text += f", cleared {human(report.cleared)}"
        text += f", {report.seconds:.1f} s ({human(int(rate))}/s); digest {report.digest}"
    if report.verified:
        text += "; verified"
    return scrub(text)

