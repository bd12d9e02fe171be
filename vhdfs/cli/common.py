"""Options and helpers shared by commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vhdfs.chain import Chain
from vhdfs.resolve import OpenOptions, open_chain
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.footer import SIZE_RULES


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The read options of every command that opens an image."""
    group = parser.add_argument_group("chain options")
    group.add_argument("--parent", action="append", default=[], metavar="PATH",
                       help="use this file as a parent (matched by unique id; repeatable)")
    group.add_argument("--search", action="append", default=[], metavar="DIR",
                       help="also look for parents in this folder (repeatable)")
    group.add_argument("--size-rule", choices=SIZE_RULES, default="auto",
                       help="virtual size from the footer's current size or its CHS geometry "
                       "(auto: geometry for Virtual PC and old qemu disks, current size for "
                       "all others, as qemu does)")
    group.add_argument("--stats", action="store_true",
                       help="at the end, print the bytes and requests fetched from blob storage "
                       "(on standard error)")
    group.add_argument("--cache-dir", metavar="DIR",
                       help="keep blocks read from blob storage in DIR for later commands (also "
                       "VHDFS_CACHE_DIR; at most VHDFS_CACHE_SIZE, default 1G; docs/azure.md)")


def open_options(args: argparse.Namespace) -> OpenOptions:
    from vhdfs.azure import blockcache

    blockcache.configure(args.cache_dir)  # for every blob this command opens
    return OpenOptions(parents=list(args.parent), search=list(args.search),
                       size_rule=args.size_rule)


def open_image(args: argparse.Namespace, spec: str, *, writable: bool = False,
               allow_raw: bool = False) -> Chain:
    return open_chain(spec, open_options(args), writable=writable, allow_raw=allow_raw)


def warn_children(chain: Chain, search: list[str]) -> None:
    """Before the first write into the top layer (mount --rw, put, rm, mkdir): its
    children, beside it or in --search, which the write invalidates."""
    from vhdfs.maintain.siblings import children_warning  # only for the commands that write

    top = chain.top
    if isinstance(top.source, LocalFile) and top.unique_id:
        warning = children_warning(Path(top.name), top.unique_id, search)
        if warning:
            logging.getLogger("vhdfs").warning("%s", warning)


def layer_names(chain: Chain) -> list[str]:
    """The chain's files (or blob URLs), top first: the `chain` of --json results."""
    return [layer.name for layer in chain.layers]


def transfer_totals() -> dict:
    """What this process fetched and sent, with the --stats line as "summary" (the mount
    daemon's totals for `vhdfs umount` to print)."""
    from vhdfs.azure.stats import TRANSFER, summary_of

    numbers = TRANSFER.snapshot()
    return {**numbers, "summary": summary_of(numbers)}


def print_stats(args: argparse.Namespace) -> None:
    """--stats: what the command fetched from (and sent to) blob storage, on stderr."""
    if getattr(args, "stats", False):  # only the commands that open images have --stats
        from vhdfs.azure.stats import TRANSFER

        print(f"vhdfs: stats: {TRANSFER.summary()}", file=sys.stderr)
