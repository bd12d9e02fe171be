"""One mount from start to end: mount, serve, flush, unmount.

`serve` blocks until the file system is unmounted (`vhdfs umount`, `fusermount3 -u`) or the
process gets SIGINT, SIGTERM or SIGHUP; either way every acknowledged write is flushed to the
top layer before it returns, and nothing stays mounted. `ready` is called once the mount
answers requests (a getattr and a read through the kernel, from a worker thread).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from vhdfs.chain import Chain
from vhdfs.errors import MountError, VhdfsError
from vhdfs.fuse.ops import ChainOperations
from vhdfs.fuse.tree import DiskFile
from vhdfs.mounttable import FSTYPE

log = logging.getLogger("vhdfs")

FLUSH_INTERVAL = 3.0  # seconds between metadata flushes while writes come in
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path  # absolute
    writable: bool = False
    allow_other: bool = False
    flush_interval: float = FLUSH_INTERVAL
    # `mount --stats`: the traffic totals (with a one-line "summary"), logged at unmount and
    # answered as an extended attribute for `vhdfs umount` to print.
    stats: Callable[[], dict[str, Any]] | None = None
    # The kernel's page cache (with write-back) between the files and the daemon, for the
    # private mount of `put`, `rm` and `mkdir` alone: ntfs-3g writes its device in 4 KiB
    # pieces, many of them again and again to the same metadata, and the cache turns them
    # into few large writes. Its writes reach the daemon when the tool syncs, closes the file
    # or is unmounted, and the private mount waits for all of that; a user's `mount --rw`
    # keeps direct I/O, where every acknowledged write is in the daemon at once.
    page_cache: bool = False


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {"fsname=vhdfs", f"subtype={FSTYPE.split('.', 1)[1]}"}
    if not config.writable:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


def _probe(mountpoint: Path, first: DiskFile) -> None:
    """A request through the kernel: attributes and the first bytes of the first file."""
    path = mountpoint / first.name
    if os.stat(path).st_size != first.size:
        raise MountError(f"{mountpoint}: the new mount shows {first.name} with the wrong size")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 512, 0)
    except OSError as exc:
        if exc.errno != errno.EIO:  # a damaged first block still means the mount answers
            raise
    finally:
        os.close(fd)


async def _report_ready(mountpoint: Path, first: DiskFile, ready: Callable[[], None]) -> None:
    with trio.fail_after(READY_TIMEOUT):
        await trio.to_thread.run_sync(_probe, mountpoint, first, abandon_on_cancel=True)
    ready()
    log.info("serving at %s", mountpoint)


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("got %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _main(ops: ChainOperations, config: MountConfig, first: DiskFile,
                ready: Callable[[], None] | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        if config.writable:
            nursery.start_soon(ops.flush_periodically, config.flush_interval)
        if ready is not None:
            nursery.start_soon(_report_ready, config.mountpoint, first, ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of trio nurseries, if it is one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def serve(chain: Chain, files: list[DiskFile], config: MountConfig,
          ready: Callable[[], None] | None = None) -> None:
    """Mount `files` of `chain` at the mount point and serve until unmounted or signalled."""
    ops = ChainOperations(chain, files, writable=config.writable, stats=config.stats,
                          page_cache=config.page_cache)
    try:
        pyfuse3.init(ops, str(config.mountpoint), fuse_options(config))
    except RuntimeError as exc:
        raise MountError(f"{config.mountpoint}: the FUSE mount failed ({exc}); see the fuse "
                         "message above") from None
    failure: BaseException | None = None
    try:
        trio.run(_main, ops, config, files[0], ready)
    except BaseException as exc:  # noqa: BLE001 - unmount and flush whatever happened
        failure = exc
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception as exc:  # noqa: BLE001 - the flush below matters more
            log.warning("%s: unmounting failed: %s", config.mountpoint, exc)
    if config.writable:
        try:
            chain.flush()
        except VhdfsError as exc:
            raise MountError(f"{config.mountpoint}: unmounted, but the final flush of "
                             f"{chain.top.name} failed: {exc}") from None
    log.info("unmounted %s", config.mountpoint)
    if config.stats is not None:
        log.info("stats: %s", config.stats()["summary"])
    if failure is not None:
        failure = _single(failure)
        if isinstance(failure, trio.TooSlowError):
            raise MountError(f"{config.mountpoint}: the mount did not answer within "
                             f"{READY_TIMEOUT:.0f} s; unmounted") from None
        if isinstance(failure, KeyboardInterrupt | VhdfsError):
            raise failure
        raise MountError(f"{config.mountpoint}: the FUSE loop stopped: "
                         f"{type(failure).__name__}: {failure}") from failure
