"""vhdfs get IMAGE PATH DEST [--volume N] [--force]; DEST - is standard output"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vhdfs.cli.commands.ls import add_volume_option
from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import emit, no_json
from vhdfs.errors import UsageError
from vhdfs.guest.copyout import copy_out
from vhdfs.guest.files import iter_content
from vhdfs.guest.paths import locate, parse_guest_path
from vhdfs.guest.volumes import open_volumes
from vhdfs.quoting import escape
from vhdfs.units import human


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("get", help="copy a guest file or directory out of the image",
                            description="Copy a file (or a directory, recursively) from inside "
                            "the guest to DEST. When DEST is an existing folder, the file keeps "
                            "its name inside it. All or nothing: the copy is written next to DEST "
                            "first and renamed into place; what is in the way (a file, a link) "
                            "is replaced only with --force, and a link is never followed. "
                            "Entries a damaged file system cannot describe are left out with a "
                            "warning, and the exit status is then 1. DEST - writes the file to "
                            "standard output (a file only, not a directory).")
    parser.add_argument("image")
    parser.add_argument("path")
    parser.add_argument("dest", help="a file or folder, or - for standard output")
    add_volume_option(parser)
    parser.add_argument("--force", action="store_true",
                        help="replace files and links in the way (a link itself, never its "
                        "target; never a folder)")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dest == "-":
        return _to_stdout(args)
    started = time.monotonic()
    with open_image(args, args.image, allow_raw=True) as chain:
        found = locate(open_volumes(chain), parse_guest_path(args.path), args.volume)
        dest = Path(args.dest)
        if dest.is_dir() and found.parts:
            dest = dest / found.parts[-1]
        skipped: list[str] = []
        copied = copy_out(found, dest, force=args.force, skipped=skipped)
        sizes = [local.stat().st_size for _, local in copied]
        total = sum(sizes)
        if args.json:
            emit(args, {"image": args.image, "volume": found.volume.number, "path": found.path,
                        "dest": str(dest), "files": [
                            {"path": guest, "dest": str(local), "bytes": size}
                            for (guest, local), size in zip(copied, sizes, strict=True)],
                        "bytes": total, "skipped": skipped,
                        "seconds": round(time.monotonic() - started, 3)})
            return 1 if skipped else 0
        guest, where = escape(found.path), escape(str(dest))
        if len(copied) == 1 and not found.is_dir:
            print(f"copied {guest} from volume {found.volume.number} to {where} "
                  f"({human(total)})")
        else:
            print(f"copied {len(copied)} file(s) from {guest} on volume "
                  f"{found.volume.number} to {where} ({human(total)})")
        if skipped:
            print(f"left out {len(skipped)} damaged entr{'y' if len(skipped) == 1 else 'ies'} "
                  "(see the warnings above)")
            return 1
    return 0


def _to_stdout(args: argparse.Namespace) -> int:
    """DEST -: the file's bytes on standard output, as `vhdfs cat` writes them."""
    no_json(args, "get IMAGE PATH - writes the file's bytes to standard output; for its "
            "metadata use vhdfs ls --json IMAGE PATH")
    with open_image(args, args.image, allow_raw=True) as chain:
        found = locate(open_volumes(chain), parse_guest_path(args.path), args.volume)
        if found.is_dir:
            raise UsageError(f"{escape(found.path)}: is a directory on "
                             f"{escape(found.volume.describe())}; - writes one file to standard "
                             "output: give a folder as DEST to copy a directory")
        out = sys.stdout.buffer  # data, not text: not the scrubber's to change
        for data in iter_content(found):
            out.write(data)
        out.flush()
    return 0
