"""vhdfs changes IMAGE [--json]"""

from __future__ import annotations

import argparse
import os

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.errors import UsageError
from vhdfs.guest.changes import ChangedItem, find_changes
from vhdfs.quoting import escape
from vhdfs.units import human

STATUS_LETTERS = {"added": "A", "modified": "M", "deleted": "D", "unlinked": "U", "freed": "F"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("changes", help="which guest files the top layer changes",
                            description="List the guest files and directories that the top "
                            "layer (a differencing disk) changes compared to its parent: its "
                            "written sectors are mapped to the files that own them (data, NTFS "
                            "MFT records). File-system metadata ($MFT, $LogFile, $Bitmap, FAT "
                            "tables, the ext journal) is listed separately. Sectors written with "
                            "the same bytes the parent has are not changes. Status: A added, "
                            "M modified, D deleted, U in use but in no directory, F record freed.")
    parser.add_argument("image")
    add_image_options(parser)
    parser.set_defaults(func=run)


def _what(item: ChangedItem) -> str:
    return ", ".join(f"{part} {human(size)}" for part, size in item.what.items())


def _path(item: ChangedItem) -> str:
    """A guest path escaped as `ls -b` does (a crafted name cannot fake a line)."""
    return escape(item.path) + ("/" if item.kind == "dir" and item.path != "/" else "")


def run(args: argparse.Namespace) -> int:
    with open_image(args, args.image) as chain:
        if len(chain.layers) < 2:
            raise UsageError(f"{args.image}: has no parent; vhdfs changes compares a "
                             "differencing disk with its parent")
        changes = find_changes(chain)
        if args.json:
            print_json(changes.to_json())
            return 0
        top = escape(os.path.basename(changes.top))
        parent = escape(os.path.basename(changes.parent))
        print(f"{top} changes {human(changes.changed_bytes)} of the disk over its parent "
              f"{parent} ({human(changes.written_bytes)} written, "
              f"{human(changes.identical_bytes)} of it identical to the parent)")
        if not changes.changed_bytes:
            print("no guest file changes")
            return 0
        for vol in changes.volumes:
            print(f"\n{escape(vol.volume.describe())}: {human(vol.changed_bytes)} in "
                  f"{vol.ranges} range(s)")
            if vol.error:
                print(f"  cannot read the file system: {escape(vol.error, backslash=False)}")
                continue
            width = max((len(_path(i)) for i in vol.items + vol.metadata), default=0)
            for item in vol.items:
                print(f"  {STATUS_LETTERS.get(item.status, '?')}  {_path(item):<{width}}  "
                      f"{_what(item)}")
            if not vol.items:
                print("  no guest files or directories")
            if vol.metadata:
                print("  file-system metadata:")
                for item in vol.metadata:
                    print(f"  {STATUS_LETTERS.get(item.status, '?')}  {_path(item):<{width}}  "
                          f"{_what(item)}")
            if vol.unattributed:
                print(f"  {human(vol.unattributed)} in no file (free space, or file-system "
                      "structures TSK does not name, such as inode tables)")
        for piece in changes.outside:
            print(f"\noutside the volumes: {piece['what']}: {human(piece['bytes'])} at offset "
                  f"{piece['offset']}")
    return 0
