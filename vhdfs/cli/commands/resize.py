"""vhdfs resize IMAGE [SIZE] [--align] [--force]"""

from __future__ import annotations

import argparse
import dataclasses

from vhdfs.cli.conventions import report as print_result
from vhdfs.vhd.footer import SIZE_RULES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "resize", help="make a VHD larger or smaller in place (crash-safe; partitions untouched)",
        description="Give the VHD IMAGE the virtual size SIZE, in place: a fixed or dynamic "
        "disk (a dynamic disk's BAT grows, moving the first blocks if it must), or a "
        "differencing disk to its parent's new size. Every write is ordered so that a crash "
        "leaves the old disk or the new one. Shrinking is refused when data or a partition "
        "lies past the new end (--force cuts it, and says what). A disk with children is "
        "refused (--force: then resize each child to the same size, from the base up). "
        "Partition tables and file systems are not changed: the result names the next step.")
    parser.add_argument("image", help="a local VHD file")
    parser.add_argument("size", nargs="?", help="the new virtual size (10G, 68157440), or a "
                        "change (+1G, -512M); with --align it may be left out")
    parser.add_argument("--align", action="store_true",
                        help="round the size up to a whole MiB (Azure's rule for disks); "
                        "without SIZE, round the current size up")
    parser.add_argument("--force", action="store_true",
                        help="shrink even if data or a partition lies past the new end (it is "
                        "cut; the warning says what), and resize a disk that has children")
    group = parser.add_argument_group("chain options")
    group.add_argument("--parent", action="append", default=[], metavar="PATH",
                       help="a differencing disk's parent (matched by unique id; repeatable)")
    group.add_argument("--search", action="append", default=[], metavar="DIR",
                       help="also look for parents, and for children of IMAGE, in this folder "
                       "(repeatable)")
    group.add_argument("--size-rule", choices=SIZE_RULES, default="auto",
                       help="the current size from the footer's current size or its CHS "
                       "geometry (auto: as qemu reads it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vhdfs.errors import UsageError
    from vhdfs.resize import describe, resize
    from vhdfs.resolve import OpenOptions

    if args.force_share:
        raise UsageError("--force-share is for reading: resize writes IMAGE and holds it "
                         "exclusively")
    options = OpenOptions(parents=list(args.parent), search=list(args.search),
                          size_rule=args.size_rule)  # a local file: no blob options
    report = resize(args.image, args.size, align=args.align, force=args.force, options=options)
    print_result(args, dataclasses.asdict(report), describe(report))
    return 0
