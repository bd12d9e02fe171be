"""vhdfs umount MOUNTPOINT [--lazy]"""

from __future__ import annotations

import argparse
import os
import sys
import time

from vhdfs.cli.conventions import report
from vhdfs.fuse.unmount import mount_stats, unmount


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "umount", help="unmount a vhdfs mount and wait until the image is complete",
        description="Flush and unmount MOUNTPOINT, then wait for its daemon to finish writing, "
        "so the image can be used as soon as this returns.")
    parser.add_argument("mountpoint")
    parser.add_argument("--lazy", action="store_true",
                        help="detach now even if files are open; the daemon ends when they close")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the daemon to exit (default 60)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    stats = mount_stats(args.mountpoint)  # a mount made with --stats: its daemon's totals
    text = unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    numbers = {k: v for k, v in stats.items() if k != "summary"} if stats else None
    report(args, {"mountpoint": os.path.abspath(args.mountpoint), "lazy": args.lazy,
                  "seconds": round(time.monotonic() - started, 3), "stats": numbers}, text)
    if stats:
        print(f"vhdfs: stats: {stats['summary']}", file=sys.stderr)
    return 0
