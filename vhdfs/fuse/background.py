"""Serve a chain from a background daemon: `vhdfs mount` and the private mount of the guest
writers (`put`, `rm`, `mkdir`) start theirs here, so both hold the image locks the same way.

The command has opened (and locked) the chain. It forks; the daemon takes the locks over
(`locks.adopt`: the open file descriptions, and so the locks, are shared by the fork, and
the lock records now name the daemon), serves until unmounted, flushes the top layer and
closes every layer, which is what unlocks them. The command forgets the locks without
releasing them (`locks.hand_over`) once the daemon answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vhdfs.chain import Chain
from vhdfs.fuse.daemon import MountConfig, serve
from vhdfs.fuse.launch import run_detached
from vhdfs.fuse.tree import DiskFile
from vhdfs.sources import locks


def serve_in_background(chain: Chain, files: list[DiskFile], config: MountConfig, *,
                        log_file: Path | None = None,
                        on_start: Callable[[], None] | None = None,
                        on_exit: Callable[[], None] | None = None) -> int:
    """Fork the daemon serving `files` of `chain` at `config.mountpoint`; returns its pid
    once the mount answers (a failure before that is raised here, nothing left mounted).
    `on_start` runs first in the daemon (the private mount watches its parent from there),
    `on_exit` last, once the chain is closed."""
    def daemon(ready: Callable[[], None]) -> None:
        locks.adopt()  # the locks live on in this process's descriptions
        try:
            if on_start is not None:
                on_start()
            serve(chain, files, config, ready)  # flushes the top layer before it returns
        finally:
            # Closes the top layer (a VHDX's log left empty: a clean close) and every
            # layer's file, which unlocks them and drops the records naming us.
            chain.close()
            if on_exit is not None:
                on_exit()

    pid = run_detached(daemon, config.mountpoint, log_file=log_file)
    locks.hand_over()  # the daemon holds the images now: closing them here must not unlock
    return pid
