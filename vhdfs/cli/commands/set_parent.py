"""vhdfs set-parent CHILD PARENT [--force]"""

from __future__ import annotations

import argparse
import time
from typing import Any

from vhdfs.azure.location import looks_remote
from vhdfs.cli.conventions import emit
from vhdfs.errors import UsageError
from vhdfs.maintain.setparent import set_parent
from vhdfs.resolve import OpenOptions
from vhdfs.vhd.footer import SIZE_RULES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "set-parent", help="re-link a child to its parent after the parent moved",
        description="Rewrite CHILD's parent name and its W2ru, W2ku and MacX locators to point "
        "at PARENT (a VHDX child: its parent locator's parent_linkage, relative_path, "
        "volume_path and absolute_win32_path); nothing else changes. PARENT must have the "
        "unique id (VHDX: DataWriteGuid) CHILD expects. "
        "When CHILD is a page blob (az://CONTAINER/BLOB or a URL), PARENT is a blob too and the "
        "link is recorded in CHILD's metadata instead.")
    parser.add_argument("child")
    parser.add_argument("parent")
    parser.add_argument("--force", action="store_true",
                        help="link even when PARENT's unique id differs, and record its id: "
                        "DANGEROUS, a wrong parent makes the child read garbage")
    parser.add_argument("--search", action="append", default=[], metavar="DIR",
                        help="folders to look for PARENT's own parents (loop check)")
    parser.add_argument("--size-rule", choices=SIZE_RULES, default="auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.force_share:
        raise UsageError("--force-share is for reading: set-parent rewrites CHILD's header and "
                         "holds it alone")
    if looks_remote(args.child):  # a blob: the link goes into its metadata (vhdfs.azure.links)
        return _run_remote(args)
    options = OpenOptions(search=list(args.search), size_rule=args.size_rule)
    started = time.monotonic()
    result = set_parent(args.child, args.parent, force=args.force, options=options)
    if args.json:
        emit(args, _result(
            started, child=result.child, parent=result.parent,
            parent_unique_id=result.parent_unique_id, forced=result.forced,
            old_name=result.old_name, new_name=result.new_name,
            old_locators=_locators(result.old_locators), locators=_locators(result.new_locators),
            metadata=None))
        return 0
    forced = " (forced: parent id replaced)" if result.forced else ""
    print(f"re-linked {result.child} to {result.parent}, unique id {result.parent_unique_id}{forced}")
    if result.old_name or result.new_name:  # a VHDX records no parent name
        print(f"  parent name  {result.old_name or '(none)'} -> {result.new_name}")
    for code, text in result.new_locators:
        print(f"  locator {code:<4} {text}")
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    from vhdfs.maintain.setparent_blob import set_parent_remote

    if args.force:
        raise UsageError("--force applies to local files only: a blob's parent link is recorded "
                         "only after the identity check")
    started = time.monotonic()
    link = set_parent_remote(args.child, args.parent, size_rule=args.size_rule)
    if args.json:
        emit(args, _result(started, child=link.child, parent=link.parent,
                           parent_unique_id=link.parent_id, forced=False, old_name=None,
                           new_name=None, old_locators=[], locators=[],
                           metadata={"vhdfs_parent": link.value}))
        return 0
    print(f"linked {link.child} to {link.parent}, unique id {link.parent_id} (recorded in its "
          f"metadata: vhdfs_parent={link.value})")
    return 0


def _locators(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"code": code, "path": text} for code, text in pairs]


def _result(started: float, **facts: Any) -> dict[str, Any]:
    """The --json result (keys as README's "set-parent"): a local child's header and
    locators, or a blob child's metadata."""
    return {**facts, "seconds": round(time.monotonic() - started, 3)}
