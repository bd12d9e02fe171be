"""vhdfs set-parent CHILD PARENT [--force]"""

from __future__ import annotations

import argparse

from vhdfs.azure.location import looks_remote
from vhdfs.errors import UsageError
from vhdfs.maintain.setparent import set_parent
from vhdfs.resolve import OpenOptions
from vhdfs.vhd.footer import SIZE_RULES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "set-parent", help="re-link a child to its parent after the parent moved",
        description="Rewrite CHILD's parent name and its W2ru, W2ku and MacX locators to point "
        "at PARENT; nothing else changes. PARENT must have the unique id CHILD expects. "
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
    if getattr(args, "force_share", False):
        raise UsageError("--force-share is for reading: set-parent rewrites CHILD's header and "
                         "holds it alone")
    if looks_remote(args.child):  # a blob: the link goes into its metadata (vhdfs.azure.parents)
        return _run_remote(args)
    options = OpenOptions(search=list(args.search), size_rule=args.size_rule)
    result = set_parent(args.child, args.parent, force=args.force, options=options)
    forced = " (forced: parent id replaced)" if result.forced else ""
    print(f"re-linked {result.child} to {result.parent}, unique id {result.parent_unique_id}{forced}")
    print(f"  parent name  {result.old_name or '(none)'} -> {result.new_name}")
    for code, text in result.new_locators:
        print(f"  locator {code:<4} {text}")
    return 0


def _run_remote(args: argparse.Namespace) -> int:
    from vhdfs.azure.parents import set_parent_remote

    if args.force:
        raise UsageError("--force applies to local files only: a blob's parent link is recorded "
                         "only after the identity check")
    link = set_parent_remote(args.child, args.parent, size_rule=args.size_rule)
    print(f"linked {link.child} to {link.parent}, unique id {link.parent_id} (recorded in its "
          f"metadata: vhdfs_parent={link.value})")
    return 0
