"""vhdfs ls IMAGE [PATH] [--volume N] [-l]"""

from __future__ import annotations

import argparse
import time

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.guest.files import Entry, entry_of, list_dir
from vhdfs.guest.paths import locate, parse_guest_path
from vhdfs.guest.volumes import DiskVolumes, open_volumes
from vhdfs.quoting import escape


def add_volume_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volume", type=int, metavar="N",
                        help="the volume (partition number, see vhdfs volumes); by default the "
                        "one volume that has PATH")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ls", help="list a directory inside the guest",
                            description="List a directory (or show one file) inside the guest's "
                            "file system, read through the chain without mounting. PATH takes / "
                            "or \\, an optional drive letter, and matches case-insensitively on "
                            "NTFS and FAT. Without PATH (and --volume) on a disk with several "
                            "volumes: the root of each, headed by its volume.")
    parser.add_argument("image")
    parser.add_argument("path", nargs="?")
    add_volume_option(parser)
    parser.add_argument("-l", dest="long", action="store_true",
                        help="long listing: type, size, modification time")
    add_image_options(parser)
    parser.set_defaults(func=run)


def _line(entry: Entry, long: bool) -> str:
    """One entry as `ls` shows it, its names escaped as `ls -b` does (--json: exact)."""
    name = escape(entry.name) + ("/" if entry.kind == "dir" else "")
    if entry.kind == "link":
        name += f" -> {escape(entry.link_target)}"
    if entry.kind == "damaged":
        name += "  (damaged: its metadata cannot be read)"
    if not long:
        return name
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime)) if entry.mtime else "-"
    return f"{entry.kind:<7} {entry.size:>12} {stamp}  {name}"


def run(args: argparse.Namespace) -> int:
    with open_image(args, args.image, allow_raw=True) as chain:
        volumes = open_volumes(chain)
        if args.path is None and args.volume is None and len(volumes.with_fs()) > 1:
            return _roots(args, volumes)
        path = parse_guest_path(args.path or "/")
        found = locate(volumes, path, args.volume)
        entries = list_dir(found) if found.is_dir else [entry_of(found)]
        if args.json:
            print_json({"volume": found.volume.number, "path": found.path,
                        "entries": [vars(e) for e in entries]})
            return 0
        for entry in entries:
            print(_line(entry, args.long))
    return 0


def _roots(args: argparse.Namespace, volumes: DiskVolumes) -> int:
    """`vhdfs ls IMAGE` on a disk with several volumes: the root of each, headed by its
    volume, as `ls DIR1 DIR2` heads each listing (--json: {"path": "/", "volumes": [...]})."""
    root = parse_guest_path("/")
    listings = []
    for volume in volumes.with_fs():
        found = locate(volumes, root, volume.number)
        listings.append((volume, list_dir(found)))
    if args.json:
        print_json({"path": "/", "volumes": [
            {"volume": volume.number, "path": "/", "entries": [vars(e) for e in entries]}
            for volume, entries in listings]})
        return 0
    for index, (volume, entries) in enumerate(listings):
        print(("\n" if index else "") + f"{escape(volume.describe())}:")
        for entry in entries:
            print(_line(entry, args.long))
    return 0
