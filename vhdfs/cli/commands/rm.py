"""vhdfs rm IMAGE GUESTPATH [-r] [--volume N] [--force]"""

from __future__ import annotations

import argparse

from vhdfs.cli.guestwrites import (
    add_guest_path_command,
    guest,
    report_written,
    write_guest,
    written_where,
)
from vhdfs.guest.write import plan_rm, summary


def register(sub: argparse._SubParsersAction) -> None:
    add_guest_path_command(
        sub, "rm", help="remove a file or folder inside the guest (no root needed)",
        description="Remove GUESTPATH (read as cat reads it) from the guest: a file or a "
        "link; a folder and everything in it with -r; never a volume's root folder. The "
        "change lands in IMAGE only, made by the file system's own tool through a private "
        "mount (see vhdfs put).",
        flag=("-r", "--recursive"), flag_help="remove a folder and everything in it", run=run)


def run(args: argparse.Namespace) -> int:
    done = write_guest(args, "rm", lambda volumes: plan_rm(
        volumes, args.guestpath, args.volume, recursive=args.recursive))
    removed = done.outcome.removed
    inside = removed[:-1]
    text = f"removed {written_where(done.plan)} from {args.image}" + (
        f" (and everything in it: {summary(list(inside))})" if inside else "")
    report_written(args, done, text, {"removed": [
        {"path": guest(c.path), "kind": "dir" if c.is_dir else "file", "bytes": c.size}
        for c in removed], "bytes": sum(c.size for c in removed)})
    return 0
