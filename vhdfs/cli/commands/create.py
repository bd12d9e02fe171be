"""vhdfs create OUT --size SIZE [--fixed] [--block-size SIZE] | vhdfs create OUT --parent PARENT"""

from __future__ import annotations

import argparse

from vhdfs.create import (
    DEFAULT_BLOCK_SIZE,
    create_differencing,
    create_dynamic,
    create_fixed,
    parent_info_of,
)
from vhdfs.errors import UsageError
from vhdfs.format.footer import SIZE_RULES, format_unique_id
from vhdfs.quoting import escape
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.units import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "create", help="create a fixed, dynamic or differencing VHD",
        description="Create a new VHD. With --size: a dynamic disk (or --fixed). With "
        "--parent: a differencing child over PARENT (the child takes its size).")
    parser.add_argument("out")
    parser.add_argument("--size", help="virtual size, e.g. 64M, 10G (multiple of 512 bytes)")
    parser.add_argument("--fixed", action="store_true", help="fixed disk instead of dynamic")
    parser.add_argument("--block-size", help=f"block size (default {DEFAULT_BLOCK_SIZE >> 20}M)")
    parser.add_argument("--parent", help="create a differencing child over this disk or chain "
                        "(a local file, or a page blob: az://CONTAINER/BLOB or its URL; the "
                        "child records the blob's URL without any SAS)")
    parser.add_argument("--search", action="append", default=[], metavar="DIR",
                        help="folders to look for the parent's own parents")
    parser.add_argument("--size-rule", choices=SIZE_RULES, default="auto")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    block_size = parse_size(args.block_size, "--block-size") if args.block_size else None
    if args.parent:
        if args.size or args.fixed:
            raise UsageError("--parent cannot be combined with --size or --fixed: a child has "
                             "its parent's size and is always a differencing disk")
        options = OpenOptions(search=list(args.search), size_rule=args.size_rule)
        with open_chain(args.parent, options) as chain:  # the whole chain must be intact
            info = parent_info_of(args.parent, chain.top)
        footer = create_differencing(args.out, info, block_size, force=args.force)
        where = f" at {info.url}" if info.path is None else ""
        print(f"created {escape(args.out, backslash=False)}: differencing, "
              f"{footer.current_size} bytes, parent {escape(info.name, backslash=False)}{where} "
              f"({format_unique_id(info.unique_id)})")
        return 0
    if not args.size:
        raise UsageError("create needs --size SIZE (new disk) or --parent PARENT (child disk)")
    size = parse_size(args.size, "--size")
    if args.fixed:
        if block_size:
            raise UsageError("--block-size applies to dynamic disks only")
        footer = create_fixed(args.out, size, force=args.force)
        kind = "fixed"
    else:
        footer = create_dynamic(args.out, size, block_size or DEFAULT_BLOCK_SIZE, force=args.force)
        kind = "dynamic"
    print(f"created {escape(args.out, backslash=False)}: {kind}, {footer.current_size} bytes, unique id "
          f"{format_unique_id(footer.unique_id)}")
    return 0
