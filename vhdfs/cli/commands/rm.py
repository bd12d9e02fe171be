"""vhdfs rm IMAGE GUESTPATH [-r] [--volume N] [--force]"""

from __future__ import annotations

import argparse

from vhdfs.cli.conventions import report
from vhdfs.cli.guestwrites import FORCE_BASE, add_write_options, common_result, guest, write_guest
from vhdfs.guest.write import plan_rm, summary
from vhdfs.quoting import escape


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "rm", help="remove a file or folder inside the guest (no root needed)",
        description="Remove GUESTPATH (read as cat reads it) from the guest: a file or a "
        "link; a folder and everything in it with -r; never a volume's root folder. The "
        "change lands in IMAGE only, made by the file system's own tool through a private "
        "mount (see vhdfs put).")
    parser.add_argument("image")
    parser.add_argument("guestpath")
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="remove a folder and everything in it")
    add_write_options(parser, FORCE_BASE)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    done = write_guest(args, "rm", lambda volumes: plan_rm(
        volumes, args.guestpath, args.volume, recursive=args.recursive))
    plan, removed = done.plan, done.outcome.removed
    where = f"{escape(guest(plan.path), backslash=False)} on {escape(plan.target.description)}"
    inside = removed[:-1]
    text = f"removed {where} from {args.image}" + (
        f" (and everything in it: {summary(list(inside))})" if inside else "")
    report(args, {**common_result(args, done), "removed": [
        {"path": guest(c.path), "kind": "dir" if c.is_dir else "file", "bytes": c.size}
        for c in removed], "bytes": sum(c.size for c in removed),
        "seconds": round(done.seconds, 3)}, text)
    return 0
