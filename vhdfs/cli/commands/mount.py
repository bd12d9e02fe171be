"""vhdfs mount IMAGE MOUNTPOINT [--rw] [--foreground] [--allow-other] [--log FILE]"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

from vhdfs.chain import Chain
from vhdfs.cli.common import add_image_options, open_image
from vhdfs.errors import FormatError, RefusedError, UsageError, VhdfsError
from vhdfs.fuse.daemon import FLUSH_INTERVAL, MountConfig, serve
from vhdfs.fuse.launch import run_detached
from vhdfs.fuse.mountpoint import check_fuse_available, check_mountpoint
from vhdfs.fuse.tree import build_tree
from vhdfs.resolve import looks_like_vhd, open_source
from vhdfs.vhdx.layer import is_vhdx


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


def _lock_for_writing(chain: Chain) -> None:
    """One writer per image: a second `mount --rw` of the same file would corrupt it."""
    fd = getattr(chain.top.source, "fd", None)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RefusedError(f"{chain.top.name}: is open for writing by another process (another "
                           "vhdfs mount --rw?); unmount that first") from None


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
    check_fuse_available()
    mountpoint = check_mountpoint(args.mountpoint)
    log_file = Path(os.path.abspath(args.log)) if args.log else None
    try:
        chain = open_image(args, args.image, writable=args.rw, allow_raw=not args.rw)
    except FormatError:
        if args.rw and _is_raw(args.image):
            raise UsageError(f"{args.image}: is not a VHD (a raw image?); --rw writes only into "
                             "VHD images: mount it read-only, or import it first (vhdfs convert "
                             f"{args.image} NEW.vhd --to dynamic)") from None
        raise
    try:
        if args.rw:
            _lock_for_writing(chain)
        files = build_tree(chain, writable=args.rw)
        config = MountConfig(mountpoint, writable=args.rw, allow_other=args.allow_other,
                             flush_interval=args.flush_interval)
        mode = "writable" if args.rw else "read-only"
        names = ", ".join(f.name for f in files)
        if args.foreground:
            def ready() -> None:
                print(f"mounted {args.image} at {mountpoint} ({mode}: {names}); Ctrl-C or "
                      f"vhdfs umount {mountpoint} unmounts", flush=True)

            serve(chain, files, config, ready)
            print(f"unmounted {mountpoint}", flush=True)
            return 0
        pid = run_detached(lambda ready: serve(chain, files, config, ready), mountpoint,
                           log_file=log_file)
        print(f"mounted {args.image} at {mountpoint} ({mode}: {names}; daemon pid {pid}); "
              f"vhdfs umount {mountpoint} unmounts", file=sys.stdout)
        return 0
    finally:
        chain.close()
