"""Re-link a differencing VHDX child (.avhdx) after its parent moved or was renamed.

The parent locator item is rewritten: `parent_linkage` the parent's DataWriteGuid (it must
already be one of the child's two linkages, unless --force), `relative_path`,
`volume_path` and `absolute_win32_path` for the parent's new place, as `vhdfs create`
writes them; a `parent_linkage2` is dropped (it named an identity the parent no longer
has, or the same one) and any other key stays. Nothing else changes: the child's data, its
DataWriteGuid (so its own children stay valid) and every other metadata item.

Atomic by the format itself: the changed sectors of the metadata region go through the
child's log in one entry (vhdfs.vhdx.metadata.edit_metadata). A crash before the entry is
durable leaves the old locator; after it, every reader's replay (ours, qemu's, Hyper-V's)
brings the new one. No journal of vhdfs's own is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.errors import FormatError, ParentMismatch, RefusedError
from vhdfs.maintain.faults import Faults, FaultySource
from vhdfs.maintain.files import require_writable
from vhdfs.maintain.linkcheck import check_child, check_no_cycle, run_holding_child
from vhdfs.maintain.scan_vhdx import scan_vhdx_file
from vhdfs.resolve import OpenOptions, open_layer
from vhdfs.sources.local import LocalFile
from vhdfs.vhdx import build, metadata
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.rules import LINKAGE_KEYS, PATH_KEYS, Metadata, ParentLocator, parse_parent_locator

# Problems of the child set-parent replaces or that do not concern the link: a locator the
# reader refuses (replaced whole), a log a crash left (replayed first), an unfinished
# commit into it.
TOLERATED = {"locator-type", "locator-entries", "locator-entry-bounds", "locator-text",
             "locator-duplicate-key", "locator-no-linkage", "locator-linkage", "log-unreplayed",
             "log-guid-stale", "mid-commit"}


@dataclass
class VhdxRelink:
    parent_unique_id: str
    forced: bool
    old_locators: list[tuple[str, str]] = field(default_factory=list)
    new_locators: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _paths(values: dict[str, str]) -> list[tuple[str, str]]:
    return [(key, values[key]) for key in PATH_KEYS if values.get(key)]


def set_parent_vhdx(child: str, parent: str, *, force: bool = False,
                    options: OpenOptions | None = None, faults: Faults | None = None) -> VhdxRelink:
    return run_holding_child(child, parent, force, options, faults, _set_parent)


def _set_parent(child_path: Path, parent_path: Path, force: bool, options: OpenOptions,
                faults: Faults) -> VhdxRelink:
    with LocalFile(child_path) as probe:
        scan = check_child(probe, child_path, lambda source: scan_vhdx_file(source, bitmaps=False),
                           TOLERATED)
        meta = metadata.read_metadata(probe)
    require_writable(child_path, "the child", "set-parent rewrites its parent locator")
    where = f"metadata region at offset {meta.region.start}"
    locator, problem = parse_parent_locator(meta.locator_raw, where)
    old: ParentLocator | None = None if problem is not None else locator

    with LocalFile(parent_path) as parent_source:
        try:
            parent = open_layer(parent_source, options)
        except FormatError as exc:
            raise RefusedError(f"{parent_path}: cannot be a parent: {exc.what}") from None
        if parent.image_format != "VHDX":
            raise ParentMismatch(f"{parent_path}: is a {parent.image_format} image, but a VHDX "
                                 "differencing disk can only have a VHDX parent (convert the "
                                 "parent's chain to VHDX first: vhdfs convert PARENT out.vhdx "
                                 "--to vhdx, then re-create the child over it)")
        found = parent.unique_id
        matched = old is not None and found in old.ids
        if not matched and not force:
            expected = ("none it can read (its parent locator is damaged: "
                        f"{problem.what})" if old is None else
                        " or ".join(fmt.guid_text(i) for i in old.ids))
            raise ParentMismatch(
                f"{child_path}: expects a parent with DataWriteGuid {expected}, but "
                f"{parent_path} has {fmt.guid_text(found)}; it is not the disk the child was "
                "made on (or it was written to since: a write gives a VHDX a new DataWriteGuid). "
                "If you are certain it holds the same data, --force links it anyway "
                "(dangerous: a wrong parent makes the child read garbage)")
        if parent.size != scan.virtual_size:
            raise ParentMismatch(f"{child_path}: is {scan.virtual_size} bytes but {parent_path} is "
                                 f"{parent.size} bytes; a parent must have the child's size")
        if parent.logical_sector_size != meta.logical_sector_size:
            raise ParentMismatch(f"{child_path}: has {meta.logical_sector_size}-byte logical "
                                 f"sectors but {parent_path} has {parent.logical_sector_size}; a "
                                 "parent must have the child's sector size")
        with LocalFile(child_path, lock=None) as child_source:
            child_identity = child_source.identity()
        warnings = check_no_cycle(child_identity, str(child_path), parent_path, parent, options)

    values = build.parent_locator_values(found, child_path.parent, parent_path)
    if old is not None:  # keys of other tools stay; a second linkage named another identity
        kept = {k: v for k, v in old.values.items() if k not in LINKAGE_KEYS + PATH_KEYS}
        values = {**values, **kept}
    item = meta.item(fmt.PARENT_LOCATOR)
    flags = item.flags if item is not None else fmt.META_IS_REQUIRED

    def change(current: Metadata) -> bytes:
        return metadata.with_item(current.raw, fmt.PARENT_LOCATOR,
                                  build.parent_locator_bytes(values), flags)

    with FaultySource(LocalFile(child_path, writable=True), faults) as source:
        metadata.edit_metadata(source, change)
    return VhdxRelink(parent_unique_id=fmt.guid_text(found), forced=not matched,
                      old_locators=_paths(old.values) if old is not None else [],
                      new_locators=_paths(values), warnings=warnings)


__all__ = ["set_parent_vhdx", "VhdxRelink"]
