"""vhdfs mount IMAGE MOUNTPOINT [--rw] [--foreground] [--allow-other] [--log FILE]"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from vhdfs.cli.common import (
    add_image_options,
    layer_names,
    open_image,
    transfer_totals,
    warn_children,
)
from vhdfs.cli.conventions import report
from vhdfs.errors import FormatError, UsageError, VhdfsError
from vhdfs.fuse.background import serve_in_background
from vhdfs.fuse.daemon import FLUSH_INTERVAL, MountConfig, serve
from vhdfs.fuse.mountpoint import check_fuse_available, check_mountpoint
from vhdfs.fuse.tree import build_tree
from vhdfs.resolve import looks_like_vhd, open_source
from vhdfs.sources import locks
from vhdfs.vhdx.layer import is_vhdx

log = logging.getLogger("vhdfs")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "mount", help="show a chain as one flat disk (disk.raw, disk.vhd, p1, p2, ...)",
        description="Mount IMAGE (a VHD chain, or a raw image read-only) at MOUNTPOINT: "
        "disk.raw is the flat disk, disk.vhd the same bytes as a fixed VHD (read-only), p1, p2, "
        "... its partitions. Returns once the mount answers; vhdfs umount MOUNTPOINT ends it. "
        "With --rw, writes go into IMAGE (the top layer) only; its parents are never written.")
    parser.add_argument("image")
    parser.add_argument("mountpoint")
    parser.add_argument("--rw", action="store_true",
                        help="writable: disk.raw and the partition files write into IMAGE")
    parser.add_argument("--foreground", "-f", action="store_true",
                        help="stay in the foreground until unmounted (Ctrl-C unmounts)")
    parser.add_argument("--allow-other", action="store_true",
                        help="let other users see the mount (non-root users need "
                        "user_allow_other in /etc/fuse.conf)")
    parser.add_argument("--log", metavar="FILE",
                        help="append the background mount's messages to FILE (default: syslog)")
    parser.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL, metavar="SECONDS",
                        help="with --rw: write the top layer's metadata this often while writes "
                        f"come in, bounding what a crash loses (default {FLUSH_INTERVAL:g})")
    add_image_options(parser)
    parser.set_defaults(func=run)


def _is_raw(spec: str) -> bool:
    try:
        with open_source(spec) as source:
            return not looks_like_vhd(source) and not is_vhdx(source)
    except VhdfsError:
        return False


def run(args: argparse.Namespace) -> int:
    if not 0.1 <= args.flush_interval <= 3600:
        raise UsageError(f"--flush-interval {args.flush_interval:g}: give a number of seconds "
                         "from 0.1 to 3600")
    if args.rw and args.force_share:
        raise UsageError("--force-share is for reading: mount --rw writes IMAGE and holds it "
                         "alone (mount read-only to read a chain another process writes)")
    check_fuse_available()
    mountpoint = check_mountpoint(args.mountpoint)
    locks.describe_process(mountpoint=str(mountpoint))  # who holds the images, for refusals
    log_file = Path(os.path.abspath(args.log)) if args.log else None
    try:
        chain = open_image(args, args.image, writable=args.rw, allow_raw=not args.rw)
    except FormatError:
        if args.rw and _is_raw(args.image):
            raise UsageError(f"{args.image}: is not a VHD or VHDX (a raw image?); --rw writes "
                             "only into VHD and VHDX images: mount it read-only, or import it "
                             f"first (vhdfs convert {args.image} NEW.vhd --to dynamic)") from None
        raise
    try:
        if args.rw:
            warn_children(chain, list(args.search))
        files = build_tree(chain, writable=args.rw)
        config = MountConfig(mountpoint, writable=args.rw, allow_other=args.allow_other,
                             flush_interval=args.flush_interval,
                             stats=transfer_totals if args.stats else None)
        mode = "writable" if args.rw else "read-only"
        names = ", ".join(f.name for f in files)
        result = {"image": args.image, "chain": layer_names(chain), "mountpoint": str(mountpoint),
                  "mode": mode, "files": [f.name for f in files]}
        if args.foreground:
            def ready() -> None:
                report(args, {**result, "pid": os.getpid(), "foreground": True},
                       f"mounted {args.image} at {mountpoint} ({mode}: {names}); Ctrl-C or "
                       f"vhdfs umount {mountpoint} unmounts")
                sys.stdout.flush()

            serve(chain, files, config, ready)
            if not args.json:  # --json: the one object, printed when the mount answered
                print(f"unmounted {mountpoint}", flush=True)
            return 0
        pid = serve_in_background(chain, files, config, log_file=log_file)
        report(args, {**result, "pid": pid, "foreground": False},
               f"mounted {args.image} at {mountpoint} ({mode}: {names}; daemon pid {pid}); "
               f"vhdfs umount {mountpoint} unmounts")
        return 0
    finally:
        chain.close()
