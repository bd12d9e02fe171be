"""vhdfs commit CHILD [--delete-child] [--parent PATH] [--search DIR]"""

from __future__ import annotations

import argparse
import dataclasses
import time

from vhdfs.cli.common import add_image_options, open_options
from vhdfs.cli.conventions import emit
from vhdfs.errors import UsageError
from vhdfs.maintain.commit import commit
from vhdfs.units import human


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "commit", help="merge a differencing child into its parent",
        description="Copy the sectors CHILD holds into its immediate parent (fixed, dynamic or "
        "differencing). Crash-safe: if interrupted, run the same command again. CHILD is not "
        "changed; other children of the parent become invalid (--search DIR names them).")
    parser.add_argument("child")
    parser.add_argument("--delete-child", action="store_true",
                        help="delete CHILD once the parent holds all of its data")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.force_share:
        raise UsageError("--force-share is for reading: commit writes the parent and holds the "
                         "child and the parent alone while it runs")
    started = time.monotonic()
    result = commit(args.child, open_options(args), delete_child=args.delete_child,
                    quiet=args.quiet)
    if args.json:
        emit(args, {**dataclasses.asdict(result),
                    "seconds": round(time.monotonic() - started, 3)})
        return 0
    resumed = f" (resumed at block {result.resumed_at})" if result.resumed_at is not None else ""
    print(f"committed {result.child} into {result.parent}{resumed}: {human(result.bytes_copied)} in "
          f"{result.runs} run(s) from {result.blocks} block(s)")
    if result.child_deleted:
        print(f"deleted {result.child}")
    else:
        print(f"{result.child} still reads the same over {result.parent}; delete it when no "
              "longer needed")
    return 0
