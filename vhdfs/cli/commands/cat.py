"""vhdfs cat IMAGE PATH [--volume N]"""

from __future__ import annotations

import argparse
import sys

from vhdfs.cli.commands.ls import add_volume_option
from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import no_json
from vhdfs.guest.files import iter_content
from vhdfs.guest.paths import locate, parse_guest_path
from vhdfs.guest.volumes import open_volumes


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cat", help="write a guest file to standard output",
                            description="Write the contents of a file inside the guest to "
                            "standard output, read through the chain without mounting.")
    parser.add_argument("image")
    parser.add_argument("path")
    add_volume_option(parser)
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    no_json(args, "cat writes the file's bytes to standard output; for its metadata use "
            "vhdfs ls --json IMAGE PATH")
    with open_image(args, args.image, allow_raw=True) as chain:
        found = locate(open_volumes(chain), parse_guest_path(args.path), args.volume)
        out = sys.stdout.buffer
        for data in iter_content(found):
            out.write(data)
        out.flush()
    return 0
