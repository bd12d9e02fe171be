"""vhdfs convert SOURCE OUT --to raw|fixed|dynamic|vhdx [--fixed] [--format vhd|vhdx]
[--skip-free]"""

from __future__ import annotations

import argparse
import os
import time

from vhdfs.cli.common import add_image_options, layer_names, open_image
from vhdfs.cli.conventions import emit
from vhdfs.cli.formats import FORMATS, convert_target
from vhdfs.convert import TARGETS, convert
from vhdfs.create import DEFAULT_BLOCK_SIZE
from vhdfs.progress import Progress
from vhdfs.units import human, parse_size
from vhdfs.vhdx.build import DEFAULT_BLOCK_SIZE as VHDX_BLOCK_SIZE


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "convert", help="flatten a chain into raw, a fixed or dynamic VHD, or a VHDX; import a raw "
        "image",
        description="Flatten SOURCE (a VHD or VHDX chain, or a raw image) into OUT. Zero ranges "
        "are neither read nor written: raw output is sparse, dynamic output allocates only "
        "blocks with data. OUT.vhdx (or --format vhdx, or --to vhdx) makes a VHDX: --to "
        "fixed|dynamic say which kind, as does --to vhdx [--fixed]; a name that disagrees with "
        "--to or --format is refused.")
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--fixed", action="store_true", help="with VHDX output: a fixed VHDX")
    parser.add_argument("--format", choices=FORMATS,
                        help="vhd or vhdx for fixed/dynamic output (default: from OUT's suffix, "
                        "else vhd)")
    parser.add_argument("--block-size", help=f"block size of dynamic output (default "
                        f"{DEFAULT_BLOCK_SIZE >> 20}M for VHD, {VHDX_BLOCK_SIZE >> 20}M for VHDX)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--skip-free", action="store_true",
                        help="write the clusters no file uses (free space of NTFS, FAT, exFAT "
                        "and ext file systems, as The Sleuth Kit reads them) as zeros, without "
                        "reading them: deleted data is not copied. OUT then differs from SOURCE "
                        "there; partition tables, gaps and other file systems are copied as "
                        "they are")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    block_size = parse_size(args.block_size, "--block-size") if args.block_size else None
    to, fixed = convert_target(args.out, args.to, args.format, args.fixed)
    started = time.monotonic()
    with open_image(args, args.source, allow_raw=True) as chain:
        chain_names = layer_names(chain)
        progress = Progress(f"convert {args.out}", chain.size, quiet=args.quiet)
        stats = convert(chain, args.out, to, block_size=block_size, fixed=fixed, force=args.force,
                        progress=progress, skip_free=args.skip_free)
    seconds = time.monotonic() - started
    container = {"raw": "raw", "vhdx": "vhdx"}.get(to, "vhd")
    kind = "raw" if to == "raw" else ("fixed" if fixed or to == "fixed" else "dynamic")
    if args.json:
        emit(args, {"source": args.source, "chain": chain_names, "output": args.out,
                    "format": container, "kind": kind, "virtual_size": stats.size,
                    "file_size": os.stat(args.out).st_size, "data_read": stats.data_read,
                    "data_written": stats.data_written, "skipped_free": stats.skipped_free,
                    "free_space": stats.free_space.to_json() if stats.free_space else None,
                    "seconds": round(seconds, 3)})
        return 0
    shown = args.to if to != "vhdx" else f"{kind} VHDX"
    print(f"wrote {args.out} ({shown}, {stats.size} bytes): read {human(stats.data_read)}, "
          f"wrote {human(stats.data_written)} of data in {seconds:.1f} s")
    if stats.free_space is not None:
        print(f"--skip-free: left out {human(stats.skipped_free)} ({stats.skipped_free} bytes) "
              f"of data in free space; {stats.free_space.summary()}")
    return 0
