"""vhdfs convert SOURCE OUT --to raw|fixed|dynamic"""

from __future__ import annotations

import argparse
import sys

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.convert import TARGETS, convert
from vhdfs.create import DEFAULT_BLOCK_SIZE
from vhdfs.progress import Progress
from vhdfs.units import human, parse_size


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert", help="flatten a chain into raw, fixed or dynamic; import a raw image",
        description="Flatten SOURCE (a VHD chain, or a raw image) into OUT. Zero ranges are "
        "neither read nor written: raw output is sparse, dynamic output allocates only "
        "blocks with data.")
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--block-size", help="block size of dynamic output (default 2M)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    block_size = parse_size(args.block_size, "--block-size") if args.block_size else \
        DEFAULT_BLOCK_SIZE
    with open_image(args, args.source, allow_raw=True) as chain:
        progress = Progress(f"convert {args.out}", chain.size, quiet=args.quiet)
        stats = convert(chain, args.out, args.to, block_size=block_size, force=args.force,
                        progress=progress)
    print(f"wrote {args.out} ({args.to}, {stats.size} bytes): read {human(stats.data_read)}, "
          f"wrote {human(stats.data_written)} of data", file=sys.stdout)
    return 0
