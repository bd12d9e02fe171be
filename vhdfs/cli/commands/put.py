"""vhdfs put IMAGE SRC GUESTPATH [--volume N] [--force]; SRC - is standard input"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vhdfs.cli.guestwrites import (
    FORCE_BASE,
    add_write_options,
    guest,
    report_written,
    write_guest,
    written_where,
)
from vhdfs.guest.write import plan_put
from vhdfs.quoting import escape
from vhdfs.sources.modes import new_file_mode
from vhdfs.units import human


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "put", help="copy a file or folder into the guest (no root needed)",
        description="Copy SRC (a file, a folder with everything in it as cp -r copies it, or "
        "- for standard input) to GUESTPATH inside the guest. GUESTPATH is read as cat reads "
        "it (C:\\..., \\ or /, any case on NTFS and FAT); when it is an existing folder, SRC "
        "goes into it under its own name. The writes land in IMAGE only (normally a "
        "differencing child): vhdfs mounts the chain in a private folder and the file "
        "system's own tool writes (ntfs-3g, debugfs, mtools); no root, no kernel mount.")
    parser.add_argument("image")
    parser.add_argument("src", help="a local file or folder, or - for standard input")
    parser.add_argument("guestpath")
    add_write_options(parser, "replace files in the way (each keeps its owner and mode on "
                      f"ext, its permissions on NTFS); also {FORCE_BASE}")
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _source(src: str) -> Iterator[tuple[Path, str | None]]:
    """SRC as a local path and the name it keeps in a folder; standard input is first
    copied to a private temporary file (the tools read files, and the size is known)."""
    if src != "-":
        path = Path(src)
        yield path, (path.name or Path(os.path.abspath(src)).name)
        return
    with tempfile.TemporaryDirectory(prefix="vhdfs-put-stdin-") as folder:
        spooled = Path(folder) / "stdin"
        with open(spooled, "xb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
        spooled.chmod(new_file_mode())  # the mode a guest file from standard input gets
        yield spooled, None


def run(args: argparse.Namespace) -> int:
    with _source(args.src) as (source, name):
        done = write_guest(args, "put", lambda volumes: plan_put(
            volumes, source, name, args.guestpath, args.volume, force=args.force),
            progress=True)
    plan, outcome = done.plan, done.outcome
    shown_src = "-" if args.src == "-" else args.src
    files = [{"path": guest(c.path), "source": shown_src if args.src == "-" else str(c.source),
              "bytes": c.size, "replaced": c.replaces is not None} for c in outcome.written]
    total = sum(c.size for c in outcome.written)
    replaced = sum(c.replaces is not None for c in outcome.written)
    where = written_where(plan)
    if len(files) == 1 and not outcome.folders:
        text = (f"{'replaced' if replaced else 'wrote'} {where} in {args.image} "
                f"({human(total)} from {escape(shown_src, backslash=False)})")
    else:
        made = f" and {len(outcome.folders)} folder(s)" if outcome.folders else ""
        text = (f"wrote {len(files)} file(s){made} to {where} in {args.image} ({human(total)}"
                f"{f'; {replaced} replaced' if replaced else ''})")
    report_written(args, done, text, {"files": files, "folders": [guest(c.path) for c in
                                                                 outcome.folders], "bytes": total})
    return 0
