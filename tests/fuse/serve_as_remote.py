"""Serve a chain as if its files were remote (every layer's source says `remote`), so the
mount reads and writes in worker threads: `python -m tests.fuse.serve_as_remote IMAGE DIR [--rw]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vhdfs.fuse.daemon import MountConfig, serve
from vhdfs.fuse.tree import build_tree
from vhdfs.resolve import open_chain


def main() -> None:
    image, mountpoint, *rest = sys.argv[1:]
    writable = "--rw" in rest
    with open_chain(image, writable=writable) as chain:
        for layer in chain.layers:
            layer.source.remote = True
        files = build_tree(chain, writable=writable)
        serve(chain, files, MountConfig(Path(mountpoint).absolute(), writable=writable),
              ready=lambda: print("mounted (threads)", flush=True))


if __name__ == "__main__":
    main()
