"""vhdfs mkdir IMAGE GUESTPATH [-p] [--volume N] [--force]"""

from __future__ import annotations

import argparse

from vhdfs.cli.guestwrites import (
    add_guest_path_command,
    guest,
    report_written,
    write_guest,
    written_where,
)
from vhdfs.guest.write import plan_mkdir


def register(sub: argparse._SubParsersAction) -> None:
    add_guest_path_command(
        sub, "mkdir", help="make a folder inside the guest (no root needed)",
        description="Make the folder GUESTPATH (read as cat reads it) in the guest; its "
        "parent must exist, or -p makes every missing folder on the way (and accepts one "
        "that exists). The change lands in IMAGE only, made by the file system's own tool "
        "through a private mount (see vhdfs put).",
        flag=("-p", "--parents"),
        flag_help="make missing parent folders too; an existing folder is fine", run=run)


def run(args: argparse.Namespace) -> int:
    done = write_guest(args, "mkdir", lambda volumes: plan_mkdir(
        volumes, args.guestpath, args.volume, parents=args.parents))
    made = done.outcome.folders
    where = written_where(done.plan)
    text = (f"made {where} in {args.image}" + (f" ({len(made)} folders)" if len(made) > 1
                                                else "")) if made else \
        f"{where} exists already; nothing was written"
    report_written(args, done, text, {"folders": [guest(c.path) for c in made]})
    return 0
