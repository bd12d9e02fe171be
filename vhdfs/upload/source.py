"""The source of an upload, opened and planned before anything is sent.

What goes up: the flat disk of a chain as a fixed VHD (only what holds data, then a footer
that keeps the top layer's unique id and timestamp, so a differencing child of it can later
be checked against the blob); --as-is the file itself; with --patch-base only what the child
layers hold, on top of a copy of their base. Azure's disk rules are checked here, and every
local file read is watched (vhdfs.upload.watch); the fingerprint names this very version of
the source, so --resume can tell an interrupted upload of it from one of another.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vhdfs.azure.credentials import parse_location
from vhdfs.azure.location import BlobLocation, looks_remote
from vhdfs.azure.pageblob import PageBlob
from vhdfs.azure.rules import check_disk, check_page_blob
from vhdfs.chain import Chain
from vhdfs.convert import skip_free_space
from vhdfs.errors import FormatError, ParentMismatch, UsageError, VhdfsError
from vhdfs.filesystems.free import FreeSpace
from vhdfs.partitions import read_table
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions, find_parent, open_chain, open_layer, open_source
from vhdfs.sources.local import LocalFile
from vhdfs.upload.planning import Write, file_writes, flat_writes, patch_writes
from vhdfs.upload.watch import WatchedFiles
from vhdfs.vhd.build import fixed_footer
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer, format_unique_id
from vhdfs.vhd.layer import Layer


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
    skipped_free: int = 0  # --skip-free: bytes of the source's data in free space, not read
    free_space: FreeSpace | None = None  # --skip-free: the map, per volume
    # What az's --hyper-v-generation the disk needs as an OS disk: "V2" for a GPT disk (UEFI),
    # "V1" for an MBR one; None when it has no partition table vhdfs can read. Asked only by
    # a managed-disk upload (a read of the partition table, remote for a blob chain).
    hyper_v_generation: Callable[[], str | None] = lambda: None


def _fingerprint(mode: str, parts: list[str]) -> str:
    return hashlib.sha256("\n".join([mode, *parts]).encode()).hexdigest()[:32]


def upload_footer(chain: Chain, fingerprint: str, mtime: float) -> bytes:
    """The fixed-VHD footer of the uploaded disk: the top layer's unique id and timestamp
    (a raw source gets an id derived from its fingerprint), so the blob can stand in for the
    top layer as the parent of a later child (--patch-base, set-parent)."""
    top = chain.top
    unique_id = top.unique_id or uuid.UUID(
        bytes=hashlib.sha256(fingerprint.encode()).digest()[:16], version=4).bytes
    footer = fixed_footer(chain.size, unique_id=unique_id)
    own = top.creation_time
    stamp = own if own is not None else max(0, int(mtime) - 946684800)
    return footer.copy(timestamp=stamp & 0xFFFFFFFF).build()


def _without_free_space(plan: SourcePlan, chain: Chain, footer: bytes) -> SourcePlan:
    """--skip-free: the plan's writes read the chain with its file systems' free clusters as
    zeros (vhdfs.convert.skip_free_space, as convert does), so none of them is read or sent;
    whatever the planning makes of zeros (none are sent) holds for them too."""
    view, plan.free_space, plan.skipped_free = skip_free_space(chain)
    plan.writes = lambda progress: flat_writes(view, footer, progress)
    return plan


def _plan_flat(spec: str, open_options: OpenOptions, skip_free: bool = False) -> SourcePlan:
    watched = WatchedFiles.before_opening(spec)
    chain = open_chain(spec, open_options, allow_raw=True)
    try:
        watched.add_layers(chain.layers)
        top = chain.top
        # One local fixed or dynamic VHD: the size fix is vhdfs resize of the file itself.
        in_place = len(chain.layers) == 1 and top.image_format == "VHD" and \
            not top.is_differencing and not top.source.remote
        check_disk(spec, chain.size, in_place=in_place)
        facts = [layer.source.version_stamp() for layer in chain.layers]
        parts = [f"{layer.unique_id.hex()}:{tag}"
                 for layer, (_, _, tag) in zip(chain.layers, facts, strict=True)]
        # A resumed upload must be of the same bytes: with or without the free space.
        fingerprint = _fingerprint("flat", parts + (["skip-free"] if skip_free else []))
        footer = upload_footer(chain, fingerprint, facts[0][1])
        plan = SourcePlan(spec, "flat", chain.size + FOOTER_SIZE, fingerprint, facts[0][0],
                          facts[0][1], lambda progress: flat_writes(chain, footer, progress),
                          chain.close, top=chain.top, watched=watched,
                          hyper_v_generation=lambda: _generation(chain))
        return _without_free_space(plan, chain, footer) if skip_free else plan
    except BaseException:
        chain.close()
        raise


def _generation(chain: Chain) -> str | None:
    """GPT: a generation 2 VM (UEFI) boots it; MBR: generation 1 (BIOS). The partition
    table only (what `vhdfs verify` says from the boot files is the fuller answer)."""
    try:
        scheme = read_table(chain).scheme
    except VhdfsError:
        return None
    return {"gpt": "V2", "mbr": "V1"}.get(scheme)


def _plan_as_is(spec: str) -> SourcePlan:
    if looks_remote(spec):
        raise UsageError(f"{spec}: --as-is uploads a local file; this is a blob")
    watched = WatchedFiles.before_opening(spec)
    source = LocalFile(spec)
    try:
        watched.add_source(source)
        size, mtime, tag = source.version_stamp()
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


def _layers_above(spec: str, top: Layer, base_id: bytes, base_name: str,
                  open_options: OpenOptions) -> Chain:
    """The layers of SOURCE above the base blob: the top, then each parent (found as any
    command finds it) until the next one would be the layer whose unique id the base blob
    carries. The base itself is never needed locally: the blob named by --patch-base stands
    in for it, whether or not a local copy is still around."""
    layers = [top]
    seen = {top.source.identity()}
    try:
        while layers[-1].parent_id != base_id:
            if not layers[-1].is_differencing or len(layers) >= open_options.max_depth:
                raise ParentMismatch(
                    f"{spec}: expects parent id {format_unique_id(top.parent_id or b'')} "
                    f"({top.parent_name or 'no name'}), but the base blob {base_name} has unique "
                    f"id {format_unique_id(base_id)}, which no layer of the chain has; give the "
                    "blob uploaded from that parent (a plain vhdfs upload keeps the disk's "
                    "unique id)")
            parent, _ = find_parent(layers[-1], open_options, seen)
            seen.add(parent.source.identity())
            layers.append(parent)
    except BaseException:
        for layer in layers:
            layer.close()
        raise
    return Chain(layers)


def _plan_patch(spec: str, base_spec: str, open_options: OpenOptions) -> SourcePlan:
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
        top = open_layer(top_source, open_options)
    except BaseException:
        top_source.close()
        raise
    if not top.is_differencing:
        top.close()
        raise UsageError(f"{spec}: is a {top.disk_type.name.lower()} disk, not a differencing "
                         "child; --patch-base uploads a child over the blob of its parent")
    chain = _layers_above(spec, top, footer.unique_id, base.name, open_options)
    upto = len(chain.layers)
    try:
        if chain.size != base_disk:
            raise ParentMismatch(f"{spec}: is a disk of {chain.size} bytes but the base blob "
                                 f"{base.name} holds {base_disk} bytes of disk; the sizes must agree")
        check_disk(spec, chain.size)
        watched.add_layers(chain.layers[:upto])
        facts = [chain.layers[i].source.version_stamp() for i in range(upto)]
        parts = [f"{chain.layers[i].unique_id.hex()}:{facts[i][2]}" for i in range(upto)]
        fingerprint = _fingerprint("patch", [*parts, footer.unique_id.hex(), base.etag])
        new_footer = upload_footer(chain, fingerprint, facts[0][1])
    except BaseException:
        chain.close()
        raise
    return SourcePlan(spec, "patch", chain.size + FOOTER_SIZE, fingerprint, facts[0][0],
                      facts[0][1],
                      # Zeros of the child are cleared only over pages the base blob holds.
                      lambda progress: patch_writes(chain, upto, new_footer, base.data_ranges,
                                                    progress),
                      chain.close, top=chain.top, base=base_loc, base_id=footer.unique_id,
                      watched=watched)


def plan_source(spec: str, *, as_is: bool = False, patch_base: str | None = None,
                open_options: OpenOptions | None = None, skip_free: bool = False) -> SourcePlan:
    """Open what `spec` names and plan its upload: the flat disk of its chain, the file as it
    is (`as_is`), or the child layers over the blob of their base (`patch_base`);
    `skip_free`: the flat disk without its file systems' free space."""
    open_options = open_options or OpenOptions()
    if skip_free and (as_is or patch_base):
        raise UsageError(f"--skip-free leaves out the free space of a flattened disk; it does "
                         f"not go with {'--as-is' if as_is else '--patch-base'}, which upload "
                         "the file or the child's own sectors as they are")
    if as_is:
        return _plan_as_is(spec)
    if patch_base:
        return _plan_patch(spec, patch_base, open_options)
    return _plan_flat(spec, open_options, skip_free)
