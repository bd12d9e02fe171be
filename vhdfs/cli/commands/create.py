"""vhdfs create OUT --size SIZE [--fixed] [--block-size SIZE] | vhdfs create OUT --parent PARENT

OUT.vhd makes a VHD, OUT.vhdx (or .avhdx) a VHDX; --format overrides an unknown suffix."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from vhdfs.azure.location import looks_remote
from vhdfs.cli.conventions import report
from vhdfs.cli.formats import FORMATS, container_format
from vhdfs.create import (
    DEFAULT_BLOCK_SIZE,
    create_differencing,
    create_dynamic,
    create_fixed,
    create_vhdx,
    create_vhdx_differencing,
    parent_info_of,
)
from vhdfs.errors import RefusedError, UsageError
from vhdfs.quoting import escape
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.units import human, parse_size
from vhdfs.vhd.footer import SIZE_RULES, format_unique_id
from vhdfs.vhdx import build as vhdx_build
from vhdfs.vhdx import format as vhdx_format


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "create", help="create a fixed, dynamic or differencing VHD or VHDX",
        description="Create a new VHD (OUT.vhd) or VHDX (OUT.vhdx, OUT.avhdx). With --size: a "
        "dynamic disk (or --fixed). With --parent: a differencing child over PARENT (the child "
        "takes its size; a VHDX child needs a VHDX parent, a VHD child a VHD parent).")
    parser.add_argument("out")
    parser.add_argument("--size", help="virtual size, e.g. 64M, 10G (multiple of 512 bytes)")
    parser.add_argument("--fixed", action="store_true", help="fixed disk instead of dynamic")
    parser.add_argument("--block-size", help=f"block size (VHD: default {DEFAULT_BLOCK_SIZE >> 20}M; "
                        f"VHDX: 1M to 256M, default {vhdx_build.DEFAULT_BLOCK_SIZE >> 20}M, "
                        f"{vhdx_build.DEFAULT_DIFFERENCING_BLOCK_SIZE >> 20}M for a child)")
    parser.add_argument("--format", choices=FORMATS,
                        help="vhd or vhdx (default: from OUT's suffix, else vhd); a suffix that "
                        "disagrees is refused")
    parser.add_argument("--logical-sector-size", type=int, choices=(512, 4096),
                        help="VHDX only: the sector size the guest sees (default 512)")
    parser.add_argument("--parent", help="create a differencing child over this disk or chain "
                        "(a local file, or a page blob: az://CONTAINER/BLOB or its URL; the "
                        "child records the blob's URL without any SAS)")
    parser.add_argument("--search", action="append", default=[], metavar="DIR",
                        help="folders to look for the parent's own parents")
    parser.add_argument("--size-rule", choices=SIZE_RULES, default="auto")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def _result(args: argparse.Namespace, started: float, **facts: Any) -> dict[str, Any]:
    """The --json result: what was written (keys as README's "create")."""
    return {"output": args.out, **facts, "seconds": round(time.monotonic() - started, 3)}


def run(args: argparse.Namespace) -> int:
    block_size = parse_size(args.block_size, "--block-size") if args.block_size else None
    if container_format(args.out, args.format) == "vhdx":
        return _run_vhdx(args, block_size)
    started = time.monotonic()
    if args.logical_sector_size not in (None, 512):
        raise UsageError("--logical-sector-size 4096 needs a VHDX (a VHD has 512-byte sectors)")
    if args.parent:
        if args.size or args.fixed:
            raise UsageError("--parent cannot be combined with --size or --fixed: a child has "
                             "its parent's size and is always a differencing disk")
        options = OpenOptions(search=list(args.search), size_rule=args.size_rule)
        with open_chain(args.parent, options) as chain:  # the whole chain must be intact
            info = parent_info_of(args.parent, chain.top)
        footer = create_differencing(args.out, info, block_size, force=args.force)
        where = f" at {info.url}" if info.path is None else ""
        parent = {"name": info.name, "path": str(info.path) if info.path else None,
                  "url": info.url or None, "unique_id": format_unique_id(info.unique_id)}
        report(args, _result(
            args, started, format="vhd", kind="differencing", virtual_size=footer.current_size,
            # create_differencing's rule: the parent's block size unless --block-size
            block_size=block_size or info.block_size or DEFAULT_BLOCK_SIZE,
            logical_sector_size=512, unique_id=format_unique_id(footer.unique_id),
            virtual_disk_id=None, parent=parent),
            f"created {escape(args.out, backslash=False)}: differencing, "
            f"{footer.current_size} bytes, parent {escape(info.name, backslash=False)}{where} "
            f"({format_unique_id(info.unique_id)})")
        return 0
    if not args.size:
        raise UsageError("create needs --size SIZE (new disk) or --parent PARENT (child disk)")
    size = parse_size(args.size, "--size")
    if args.fixed:
        if block_size:
            raise UsageError("--block-size applies to dynamic VHDs only (a fixed VHD has no "
                             "blocks)")
        footer = create_fixed(args.out, size, force=args.force)
        kind = "fixed"
    else:
        block_size = block_size or DEFAULT_BLOCK_SIZE
        footer = create_dynamic(args.out, size, block_size, force=args.force)
        kind = "dynamic"
    report(args, _result(args, started, format="vhd", kind=kind,
                         virtual_size=footer.current_size, block_size=block_size,
                         logical_sector_size=512, unique_id=format_unique_id(footer.unique_id),
                         virtual_disk_id=None, parent=None),
           f"created {escape(args.out, backslash=False)}: {kind}, {footer.current_size} bytes, "
           f"unique id {format_unique_id(footer.unique_id)}")
    return 0


def _run_vhdx(args: argparse.Namespace, block_size: int | None) -> int:
    out = escape(args.out, backslash=False)
    started = time.monotonic()
    if args.parent:
        if args.size or args.fixed:
            raise UsageError("--parent cannot be combined with --size or --fixed: a child has "
                             "its parent's size and is always a differencing disk")
        if args.logical_sector_size:
            raise UsageError("--logical-sector-size: a child has its parent's sector size")
        if looks_remote(args.parent):
            raise UsageError(f"{args.out}: a VHDX child over a blob is not supported; download "
                             "the parent, or make a VHD child (OUT.vhd) over a VHD in blob storage")
        options = OpenOptions(search=list(args.search), size_rule=args.size_rule)
        with open_chain(args.parent, options) as chain:  # the whole chain must be intact
            parent = chain.top
            if parent.image_format != "VHDX":
                # Hyper-V links a VHDX differencing disk to a VHDX parent only.
                raise RefusedError(
                    f"{escape(args.parent, backslash=False)}: is a VHD; a VHDX differencing "
                    "disk can only have a VHDX parent; convert it first (vhdfs convert "
                    f"{escape(args.parent, backslash=False)} base.vhdx --to vhdx) or make a "
                    "VHD child (OUT.vhd)")
            spec = create_vhdx_differencing(args.out, args.parent, parent,
                                            block_size=block_size, force=args.force)
            parent_id = vhdx_format.guid_text(parent.unique_id)
        report(args, _vhdx_result(args, started, spec, "differencing", parent={
            "name": os.path.basename(args.parent), "path": args.parent, "url": None, "unique_id": parent_id}),
            f"created {out}: differencing VHDX, {spec.size} bytes, block size "
            f"{human(spec.block_size)}, parent {escape(args.parent, backslash=False)} "
            f"(DataWriteGuid {{{parent_id}}})")
        return 0
    if not args.size:
        raise UsageError("create needs --size SIZE (new disk) or --parent PARENT (child disk)")
    size = parse_size(args.size, "--size")
    spec = create_vhdx(args.out, size, fixed=args.fixed,
                       block_size=block_size or vhdx_build.DEFAULT_BLOCK_SIZE,
                       logical_sector_size=args.logical_sector_size or 512, force=args.force)
    kind = "fixed" if spec.fixed else "dynamic"
    report(args, _vhdx_result(args, started, spec, kind, parent=None),
           f"created {out}: {kind} VHDX, {spec.size} bytes, block size {human(spec.block_size)}, "
           f"{spec.logical_sector_size}-byte sectors")
    return 0


def _vhdx_result(args: argparse.Namespace, started: float, spec: vhdx_build.NewVhdx, kind: str,
                 parent: dict[str, Any] | None) -> dict[str, Any]:
    # A VHDX is linked to by its DataWriteGuid, which changes whenever it is written: no
    # unique_id here (vhdfs info shows the current one).
    return _result(args, started, format="vhdx", kind=kind, virtual_size=spec.size,
                   block_size=spec.block_size, logical_sector_size=spec.logical_sector_size,
                   unique_id=None, virtual_disk_id=vhdx_format.guid_text(spec.virtual_disk_id),
                   parent=parent)
