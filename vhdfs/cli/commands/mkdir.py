"""vhdfs mkdir IMAGE GUESTPATH [-p] [--volume N] [--force]"""

from __future__ import annotations

import argparse

from vhdfs.cli.conventions import report
from vhdfs.cli.guestwrites import FORCE_BASE, add_write_options, common_result, guest, write_guest
from vhdfs.guest.write import plan_mkdir
from vhdfs.quoting import escape


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "mkdir", help="make a folder inside the guest (no root needed)",
        description="Make the folder GUESTPATH (read as cat reads it) in the guest; its "
        "parent must exist, or -p makes every missing folder on the way (and accepts one "
        "that exists). The change lands in IMAGE only, made by the file system's own tool "
        "through a private mount (see vhdfs put).")
    parser.add_argument("image")
    parser.add_argument("guestpath")
    parser.add_argument("-p", "--parents", action="store_true",
                        help="make missing parent folders too; an existing folder is fine")
    add_write_options(parser, FORCE_BASE)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    done = write_guest(args, "mkdir", lambda volumes: plan_mkdir(
        volumes, args.guestpath, args.volume, parents=args.parents))
    plan, made = done.plan, done.outcome.folders
    where = f"{escape(guest(plan.path), backslash=False)} on {escape(plan.target.description)}"
    text = (f"made {where} in {args.image}" + (f" ({len(made)} folders)" if len(made) > 1
                                                else "")) if made else \
        f"{where} exists already; nothing was written"
    report(args, {**common_result(args, done), "folders": [guest(c.path) for c in made],
                  "seconds": round(done.seconds, 3)}, text)
    return 0
