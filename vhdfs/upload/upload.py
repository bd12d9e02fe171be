"""vhdfs upload: a disk (or any file) to a page blob, sparse, parallel, resumable, verified.

The order of one upload:
  1. open the source and check Azure's disk rules (before anything is sent: source.py); a
     file of a writable vhdfs mount is refused (a writer may change it while it is read),
     and the size, times and inode of every local file read are recorded (watch.py);
  2. look at the destination: refuse to replace it without --overwrite; with --resume,
     check that its metadata describes an interrupted upload of the same source;
  3. take a lease (held, renewed, for the whole upload: a second uploader fails at once);
     create the page blob (or, with --patch-base, copy the base blob onto it server-side);
  4. send the writes of planning.py, --concurrency at a time (sender.py), each at most
     4 MiB, 512-byte aligned, with a Content-MD5 (validate_content); --resume skips writes
     whose pages the blob already holds (its page ranges);
  5. after the last read, check that no source file changed while it was read (else fail,
     leaving the blob marked incomplete: --resume then starts over); --verify: read every
     written range back and compare digests;
  6. set the metadata with the source's size, time and digest, last, as the completion mark,
     and release the lease.

What goes up is source.py's: the flat disk of a chain as a fixed VHD, --as-is the file itself,
or with --patch-base only what the child layers hold, on top of a copy of their base.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from vhdfs.azure.blob import BlobSource
from vhdfs.azure.client import blob_client, container_client, error_code, remote_errors, translate
from vhdfs.azure.credentials import Credential, credential_for, parse_location
from vhdfs.azure.lease import LeaseKeeper
from vhdfs.azure.links import LINK_ID_KEY, LINK_KEY, link_value
from vhdfs.azure.location import BlobLocation, is_managed_disk_host, looks_remote
from vhdfs.azure.uploadmark import STATE_KEY
from vhdfs.errors import ImageIOError, RefusedError, RemoteError, UsageError, VhdfsError
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions, open_layer
from vhdfs.resolve.blob import find_blob_parent
from vhdfs.secrets import scrub, without_query
from vhdfs.units import human
from vhdfs.upload import managed
from vhdfs.upload.planning import MAX_WRITE, RangeDigest, Write, range_hash
from vhdfs.upload.sender import Sender, UploadProgress
from vhdfs.upload.source import SourcePlan, plan_source
from vhdfs.upload.watch import RESTART, pause_for_test
from vhdfs.vhd.layer import Layer

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
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
    skip_free: bool = False  # the file systems' free space goes as zeros (vhdfs.convert)
    # DEST is a managed disk's upload URL (also detected from its md-... account)
    managed_disk: bool = False


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
    skipped_free: int = 0  # --skip-free: bytes of the source's data in free space, not sent
    free_space: dict | None = None  # --skip-free: the map, per volume (FreeSpace.to_json)

    @property
    def skipped(self) -> int:
        """Bytes of the blob that were never sent (zeros, or already present)."""
        return max(0, self.blob_size - self.sent)


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


def _blob_kind(props: Any) -> str:
    """"PageBlob", "BlockBlob" ...: the SDK gives its BlobType enum, or (older versions, and
    Azurite's answers) the bare string, which has no `value`."""
    return str(getattr(props.blob_type, "value", props.blob_type))  # enum or bare string


def _check_resumable(dest: str, props: Any, plan: SourcePlan) -> str:
    """'uploading' or 'complete' when `props` is an upload of this very source, else refuse."""
    kind = _blob_kind(props)
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
            status = str(copy.status or "")
            if status == "success":
                break
            if status != "pending":
                why = copy.status_description or status
                raise RemoteError(f"{dest}: the server-side copy of {base.display} failed ({why}); "
                                  "the base must be readable by the destination account (same "
                                  "account, or a SAS in the base URL)")
            done, _, total = (copy.progress or "0/0").partition("/")
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
    if options.managed_disk or is_managed_disk_host(dest):
        options = dataclasses.replace(options, managed_disk=True)
        if options.as_is or options.patch_base:
            raise UsageError(f"{dest.display}: is a managed disk's upload URL, which takes the "
                             "disk as a fixed VHD; upload it without "
                             f"{'--as-is' if options.as_is else '--patch-base'} (a chain goes "
                             "up flattened)")
    if options.patch_base and parse_location(options.patch_base).identity() == dest.identity():
        raise UsageError(f"{dest.display}: is the base blob itself; upload to a new blob name")
    started = time.monotonic()
    plan = plan_source(source, as_is=options.as_is, patch_base=options.patch_base,
                       open_options=options.open_options, skip_free=options.skip_free)
    try:
        job = _ManagedDiskUpload if options.managed_disk else _Upload
        return job(plan, dest, options, note).run(started)
    finally:
        plan.close()


class _Upload:
    """One upload of a planned source to its page blob, in the steps of the module text."""

    def __init__(self, plan: SourcePlan, dest: BlobLocation, options: UploadOptions,
                 note: Callable[[str], None]) -> None:
        self.plan = plan
        self.dest = dest
        self.options = options
        self.note = note
        self.credential = credential_for(dest)
        self.secrets = self.credential.secrets
        self.name = dest.display
        self.client = blob_client(dest, self.credential)
        self.report = UploadReport(scrub(plan.name), self.name, plan.mode, plan.blob_size)
        if plan.free_space is not None:
            self.report.skipped_free = plan.skipped_free
            self.report.free_space = plan.free_space.to_json()
        self.props: Any = None  # the destination's properties, None while it does not exist
        self.resuming = False
        self.metadata: dict[str, str] = {}
        self.lease: Any = None

    def run(self, started: float) -> UploadReport:
        self.props = self._existing_blob()
        self._refuse_existing()
        keeper = LeaseKeeper(self.client, self.name, self.secrets)
        self.metadata = start_metadata(self.plan)
        try:
            self._take_blob(keeper)
            if self.plan.mode == "patch" and not self.report.already_complete:
                self._copy_base_unless_copied()
            digest = self._send(keeper)
            self._check_complete_digest()
            if self.options.verify:
                _verify(self.client, self.name, self.secrets, digest, self.options.concurrency,
                        None if self.plan.mode == "patch" else self.plan.blob_size)
                self.report.verified = True
            self._mark_complete(digest)
        finally:
            keeper.release()
        self.report.seconds = time.monotonic() - started
        return self.report

    # 2. the destination: refuse to replace it, or check it is this source's upload
    def _existing_blob(self) -> Any:
        try:
            return self.client.get_blob_properties()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, self.name, "reading its properties", self.secrets) from None

    def _refuse_existing(self) -> None:
        options, name = self.options, self.name
        if self.props is not None and not (options.overwrite or options.resume):
            raise RefusedError(f"{name}: already exists; pass --overwrite to replace it, or "
                               "--resume to continue an interrupted upload of the same source")
        self.resuming = options.resume and self.props is not None
        if options.resume and self.props is None:
            self.note(f"{name}: nothing to resume (no such blob); starting a new upload")
        if self.resuming:
            _check_resumable(name, self.props, self.plan)  # refuse early, before any lease wait

    # 3. the lease, and the blob created, replaced or resumed under it
    def _take_blob(self, keeper: LeaseKeeper) -> None:
        client, name, secrets, plan = self.client, self.name, self.secrets, self.plan
        if self.props is None:
            self._create_blob()
            self.lease = keeper.acquire()
            return
        self.lease = keeper.acquire(wait_for_expiry=self.resuming, on_wait=lambda: self.note(
            f"{name}: waiting for the lease of the interrupted upload to expire"))
        state = ""
        if self.resuming:
            with remote_errors(name, "reading its properties", secrets):
                self.props = client.get_blob_properties(lease=self.lease)
            state = _check_resumable(name, self.props, plan)
            if state == "restart":
                self.note(f"{name}: the last upload saw its source change while reading it; "
                          "starting over")
                self.resuming = False
        if not self.resuming:
            with remote_errors(name, "replacing it with a new page blob", secrets):
                client.create_page_blob(size=plan.blob_size, metadata=self.metadata,
                                        lease=self.lease)
            state = "uploading"
        if self.resuming and state == "complete":
            self.report.already_complete = True

    def _create_blob(self) -> None:
        """Create the page blob, and its container first when there is none (as AzCopy does)."""
        for attempt in (1, 2):
            try:
                with remote_errors(self.name, "creating the page blob", self.secrets):
                    self.client.create_page_blob(size=self.plan.blob_size, metadata=self.metadata,
                                                 if_none_match="*")
                return
            except RemoteError as exc:
                if attempt == 2 or exc.code != "ContainerNotFound":
                    raise
            self._create_container()

    def _create_container(self) -> None:
        dest, container = self.dest, self.dest.container
        try:
            container_client(dest, self.credential).create_container()
        except ResourceExistsError:
            return  # someone made it meanwhile
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise RemoteError(scrub(
                    f"{self.name}: the container {container} does not exist, and this credential "
                    f"may not create it (HTTP {exc.status_code} {error_code(exc)}); create it "
                    f"first (az storage container create --name {container} --account-name "
                    f"{dest.account}), or upload with a credential that may: the account key, or "
                    "an account SAS with the container resource type and the create permission",
                    self.secrets)) from None
            raise translate(exc, self.name, f"creating the container {container}",
                            self.secrets) from None
        except Exception as exc:
            raise translate(exc, self.name, f"creating the container {container}",
                            self.secrets) from None
        self.note(f"created the container {container} (it did not exist)")

    def _copy_base_unless_copied(self) -> None:
        plan = self.plan
        copy = self.props.copy if self.resuming else None
        copied = copy is not None and str(copy.status or "") == "success" and \
            (copy.source or "").split("?")[0] == plan.base.url
        if not copied:
            _copy_base(self.client, self.name, self.secrets, plan.base, self.metadata, self.lease,
                       f"copy {plan.base.display}", self.options.quiet)

    # 4. the writes, 5. the source's consistency
    def _present_pages(self) -> list[tuple[int, int]]:
        """Pages the interrupted upload already wrote (a patch re-sends the child's writes:
        the copied base's pages say nothing about them)."""
        if self.resuming and self.plan.mode != "patch" and not self.report.already_complete:
            return _page_ranges(self.client, self.name, self.secrets, self.plan.blob_size)
        return []

    def _send(self, keeper: LeaseKeeper | None) -> RangeDigest:
        """Every write but the last (the footer), then, once they are all answered and the
        source is known not to have changed, the last: a blob whose footer is there holds
        everything before it (a managed disk's completion mark)."""
        report = self.report
        sender = Sender(self.client, self.lease, self.name, self.secrets,
                        self.options.concurrency, self._present_pages(),
                        content_md5=not self.options.managed_disk)
        digest = RangeDigest(keep_ranges=self.options.verify)
        progress = UploadProgress(f"upload {self.name}", self.plan.blob_size,
                                  lambda: (sender.sent + sender.cleared, sender.queued,
                                           sender.present_bytes),
                                  quiet=self.options.quiet)
        last: list[Write] = []
        self._guarded(sender, lambda: last.extend(self._send_writes(sender, digest, progress,
                                                                    keeper)))
        changed = self.plan.watched.changes()  # after the last read, before anything is marked
        if changed:
            sender.abort()  # everything handed out was answered; nothing more goes
            self._refuse_changed(changed)
        self._guarded(sender, lambda: self._send_last(sender, last, keeper))
        progress.complete()
        report.sent, report.cleared = sender.sent, sender.cleared
        report.present, report.writes = sender.present_bytes, sender.writes
        report.digest = digest.hexdigest()
        return digest

    def _send_writes(self, sender: Sender, digest: RangeDigest, progress: UploadProgress,
                     keeper: LeaseKeeper | None) -> list[Write]:
        """Send every write but the one that ends the blob, wait for their answers, and
        return that one (held back)."""
        held: list[Write] = []
        for write in self.plan.writes(progress):
            digest.add(write)
            if self.report.already_complete:
                continue
            if write.end == self.plan.blob_size and write.data is not None:
                held.append(write)
                continue
            if keeper is not None:
                keeper.check()
            sender.submit(write)
            pause_for_test()
        sender.drain()
        return held

    def _send_last(self, sender: Sender, last: list[Write], keeper: LeaseKeeper | None) -> None:
        for write in last:
            if keeper is not None:
                keeper.check()
            sender.submit(write)
        sender.finish()

    def _guarded(self, sender: Sender, step: Callable[[], None]) -> None:
        """Run a sending step; on any failure stop the sender, and say how to go on."""
        try:
            step()
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

    def _refuse_changed(self, changed: str) -> None:
        _refuse_changed(self.client, self.name, self.secrets, self.metadata, self.lease,
                        changed, self.report)

    # 6. the completion mark
    def _check_complete_digest(self) -> None:
        report = self.report
        if report.already_complete:
            recorded = (self.props.metadata or {}).get("vhdfs_digest", "")
            if recorded and recorded != report.digest:
                raise RefusedError(f"{self.name}: is marked complete with digest {recorded}, but "
                                   f"the source now gives {report.digest}; use --overwrite")

    def _mark_complete(self, digest: RangeDigest) -> None:
        report, plan = self.report, self.plan
        final = dict(self.metadata)
        if plan.mode == "as-is":
            link, said = _find_link(self.dest, self.credential, plan.top,
                                    self.options.open_options)
            if said:
                report.notes.append(said)
            if link:
                final[LINK_KEY] = link
                final[LINK_ID_KEY] = (plan.top.parent_id or b"").hex()
                report.parent_link = link
        final.update({STATE_KEY: "complete", "vhdfs_digest": report.digest,
                      "vhdfs_data_bytes": str(digest.data_bytes), "vhdfs_completed": _now_iso()})
        if not report.already_complete:
            # The completion mark: set last, only once everything above succeeded.
            with remote_errors(self.name, "setting the completion metadata", self.secrets):
                self.client.set_blob_metadata(final, lease=self.lease)


class _ManagedDiskUpload(_Upload):
    """An upload into a managed disk's blob (vhdfs.upload.managed): the blob exists and is
    never created, leased, given metadata or written with a Content-MD5; its size is checked
    before any write; the footer, written last, is the completion mark; --resume reads a
    record kept on this machine and the disk's page ranges."""

    record: managed.UploadRecord | None = None
    generation: str | None = None  # the plan's hyper_v_generation, read once

    def run(self, started: float) -> UploadReport:
        self.generation = self.plan.hyper_v_generation()
        self.props = self._existing_disk()
        self.record = managed.read_record(self.dest)
        self._start()
        digest = self._send(None)
        self._check_complete_digest()
        if self.options.verify:
            _verify(self.client, self.name, self.secrets, digest, self.options.concurrency,
                    self.plan.blob_size)
            self.report.verified = True
        self._mark_complete(digest)
        self.report.seconds = time.monotonic() - started
        return self.report

    def _existing_disk(self) -> Any:
        props = self._existing_blob()
        if props is None:
            raise RemoteError(f"{self.name}: no blob at the managed disk's upload URL: its write "
                              "access was revoked or has expired; grant it again (az disk "
                              "grant-access --resource-group RG --name DISK --access-level Write "
                              "--duration-in-seconds 86400) and use the URL it returns")
        kind = _blob_kind(props)
        if kind != "PageBlob":
            raise RemoteError(f"{self.name}: is a {kind}, not a managed disk's page blob")
        managed.check_disk_size(self.name, props.size, self.plan.blob_size, self.generation)
        return props

    def _start(self) -> None:
        """Resume what the record describes, or start over on a disk that holds nothing (or,
        with --overwrite, whose pages are cleared first)."""
        plan, name, record = self.plan, self.name, self.record
        restart = False
        if self.options.resume:
            if record is None:
                raise RefusedError(
                    f"{name}: no record of an upload to this disk on this machine (looked for "
                    f"{managed.record_path(self.dest)}); --resume continues an upload started "
                    "here; start it without --resume (with --overwrite if the disk already "
                    "holds pages)")
            state = self._check_record(record)
            if state == "complete":
                self.report.already_complete = True
                return
            restart = state == "restart"
            if restart:
                self.note(f"{name}: the last upload saw its source change while reading it; "
                          "starting over")
            self.resuming = not restart
        if not self.resuming:
            held = _page_ranges(self.client, name, self.secrets, plan.blob_size)
            if held and not (self.options.overwrite or restart):
                raise RefusedError(
                    f"{name}: the managed disk already holds {human(sum(b - a for a, b in held))} "
                    "of pages (an earlier upload?); --resume continues an interrupted upload of "
                    "this same source, --overwrite clears the disk's pages first")
            for lo, hi in held:
                with remote_errors(name, f"clearing {hi - lo} bytes at offset {lo}", self.secrets):
                    self.client.clear_page(offset=lo, length=hi - lo)
        self.record = managed.UploadRecord(
            url=self.dest.url, mode=plan.mode, source=source_name(plan.name),
            source_id=plan.fingerprint, blob_size=plan.blob_size, state="uploading",
            started=record.started if self.resuming and record else _now_iso())
        managed.write_record(self.dest, self.record)

    def _check_record(self, record: managed.UploadRecord) -> str:
        fix = "start over with --overwrite"
        if record.source_id == RESTART and record.mode == self.plan.mode:
            return "restart"
        if record.blob_size != self.plan.blob_size or record.mode != self.plan.mode or \
                record.source_id != self.plan.fingerprint:
            raise RefusedError(
                f"{self.name}: the record of this disk's upload ({managed.record_path(self.dest)}) "
                f"is of {urllib.parse.unquote(record.source)} ({record.mode}, {record.blob_size} "
                f"bytes, started {record.started}), not of this {self.plan.mode} source as it is "
                f"now (changed since?); {fix}")
        return record.state

    def _refuse_changed(self, changed: str) -> None:
        managed.write_record(self.dest, dataclasses.replace(self.record, source_id=RESTART))
        raise ImageIOError(f"{changed} while the upload read it, so what was sent mixes old and "
                           f"new data: the footer of {self.name} was not written; once nothing "
                           "writes the source, run the same command with --resume (it starts "
                           "over)")

    def _check_complete_digest(self) -> None:
        recorded = self.record.digest if self.record else ""
        if self.report.already_complete and recorded and recorded != self.report.digest:
            raise RefusedError(f"{self.name}: was uploaded complete with digest {recorded}, but "
                               f"the source now gives {self.report.digest}; use --overwrite")

    def _mark_complete(self, digest: RangeDigest) -> None:
        if not self.report.already_complete:
            managed.write_record(self.dest, dataclasses.replace(
                self.record, state="complete", digest=self.report.digest,
                data_bytes=digest.data_bytes, completed=_now_iso()))
        self.report.notes.extend(managed.follow_up(self.dest, self.generation))


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
        if report.free_space is not None:
            text += f", left out {human(report.skipped_free)} of data in free space (--skip-free)"
        text += f", {report.seconds:.1f} s ({human(int(rate))}/s); digest {report.digest}"
    if report.verified:
        text += "; verified"
    return scrub(text)

