"""vhdfs create: new fixed, dynamic and differencing VHDs (vhdfs.vhd.build lays them out) and
VHDX files (vhdfs.vhdx.build), from a size or over a parent chain.

Every new file is written under a temporary name in the destination folder and renamed into
place once complete and synced: a crash never leaves a half-written image under the name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vhdfs.azure.credentials import parse_location
from vhdfs.azure.location import looks_remote
from vhdfs.errors import RefusedError, UsageError
from vhdfs.image import ImageLayer
from vhdfs.sources import locks
from vhdfs.sources.modes import give_new_file_mode
from vhdfs.vhd.build import (
    DEFAULT_BLOCK_SIZE,
    ParentInfo,
    check_block_size,
    check_size,
    require_text_path,
    write_fixed,
    write_sparse,
)
from vhdfs.vhd.footer import DiskType, Footer
from vhdfs.vhdx import build as vhdx_build
from vhdfs.vhdx.build import NewVhdx

_EPOCH_2000 = 946684800


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `out`; rename it to `out` when the block succeeds."""
    target = Path(out)
    if target.exists() and not force:
        raise RefusedError(f"{target}: already exists; choose another name or pass --force "
                           "to replace it")
    if target.is_dir():
        raise RefusedError(f"{target}: is a directory")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{target}: folder {folder} does not exist")
    # Replacing an image that a mount or another command has open would leave it writing to
    # a file no name reaches any more (its later writes silently lost): the old file is held
    # alone, as a writer would hold it, until the new one has its name (ImageBusy, exit 9).
    with locks.lock_path(target, locks.Mode.EXCLUSIVE) if target.exists() else \
            contextlib.nullcontext():
        yield from _written_then_renamed(target, folder)


def _written_then_renamed(target: Path, folder: Path) -> Iterator[Path]:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".vhdfs-partial",
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        give_new_file_mode(tmp, target)  # mkstemp's 0600 -> the umask's (or the replaced file's)
        os.replace(tmp, target)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def create_fixed(out: str | os.PathLike[str], size: int, *, force: bool = False) -> Footer:
    check_size(size, DiskType.FIXED)
    with atomic_output(out, force=force) as tmp:
        return write_fixed(tmp, size)


def create_dynamic(out: str | os.PathLike[str], size: int, block_size: int = DEFAULT_BLOCK_SIZE,
                   *, force: bool = False) -> Footer:
    check_size(size, DiskType.DYNAMIC)
    check_block_size(block_size, size)
    with atomic_output(out, force=force) as tmp:
        return write_sparse(tmp, size, block_size, DiskType.DYNAMIC)


def create_differencing(out: str | os.PathLike[str], parent: ParentInfo,
                        block_size: int | None = None, *, force: bool = False) -> Footer:
    size = parent.size
    check_size(size, DiskType.DIFFERENCING)
    block_size = block_size or parent.block_size or DEFAULT_BLOCK_SIZE
    check_block_size(block_size, size)
    target = Path(out)
    if parent.path is not None and target.exists() and target.resolve() == parent.path.resolve():
        raise RefusedError(f"{target}: is the parent itself; choose another name for the child")
    with atomic_output(out, force=force) as tmp:
        # Locators are computed for the final name's folder (same folder as tmp).
        return write_sparse(tmp, size, block_size, DiskType.DIFFERENCING, parent)


def parent_info_of(path: str | os.PathLike[str], layer: ImageLayer) -> ParentInfo:
    """ParentInfo for an opened layer (the top of the chain a child will extend): a local
    file, or a page blob (`az://`, `https://`), whose URL is recorded without its query."""
    if layer.image_format != "VHD":
        # Hyper-V links a VHD differencing disk to a VHD parent only.
        raise RefusedError(f"{path}: is a {layer.image_format} image; a VHD differencing disk "
                           f"can only have a VHD parent; convert it first: vhdfs convert {path} "
                           "base.vhd --to dynamic")
    if looks_remote(str(path)):
        return ParentInfo(path=None, unique_id=layer.unique_id, size=layer.size,
                          timestamp=layer.creation_time or 0, block_size=layer.block_size,
                          url=parse_location(str(path)).url)
    where = Path(path).resolve()
    require_text_path(where)
    mtime = int(where.stat().st_mtime) - _EPOCH_2000
    return ParentInfo(path=where, unique_id=layer.unique_id, size=layer.size,
                      timestamp=min(max(0, mtime), 0xFFFFFFFF),
                      block_size=layer.block_size)


# ---------------------------------------------------------------- VHDX
def create_vhdx(out: str | os.PathLike[str], size: int, *, fixed: bool = False,
                block_size: int = vhdx_build.DEFAULT_BLOCK_SIZE, logical_sector_size: int = 512,
                physical_sector_size: int = 4096, force: bool = False) -> NewVhdx:
    """A new fixed or dynamic VHDX (see vhdfs.vhdx.build for its layout)."""
    spec = NewVhdx(size=size, block_size=block_size, logical_sector_size=logical_sector_size,
                   physical_sector_size=physical_sector_size, fixed=fixed)
    vhdx_build.check_new(spec)
    with atomic_output(out, force=force) as tmp:
        vhdx_build.write_new_file(tmp, spec)
    return spec


def create_vhdx_differencing(out: str | os.PathLike[str], parent_path: str | os.PathLike[str],
                             parent: ImageLayer, *, block_size: int | None = None,
                             force: bool = False) -> NewVhdx:
    """A new differencing VHDX (a checkpoint, .avhdx) over the local VHDX `parent`: its
    size, sector sizes and virtual disk id, a locator naming its DataWriteGuid."""
    where = Path(parent_path).resolve()
    require_text_path(where)
    target = Path(out)
    if target.exists() and target.resolve() == where:
        raise RefusedError(f"{target}: is the parent itself; choose another name for the child")
    folder = target.parent if str(target.parent) else Path(".")
    spec = NewVhdx(
        size=parent.size, block_size=block_size or vhdx_build.DEFAULT_DIFFERENCING_BLOCK_SIZE,
        logical_sector_size=parent.logical_sector_size,
        physical_sector_size=parent.physical_sector_size,
        parent_locator=vhdx_build.parent_locator_values(parent.unique_id, folder, where),
        virtual_disk_id=parent.virtual_disk_id)
    vhdx_build.check_new(spec)
    with atomic_output(out, force=force) as tmp:
        vhdx_build.write_new_file(tmp, spec)
    return spec
