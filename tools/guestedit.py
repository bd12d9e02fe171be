"""Change a file inside an NTFS volume of a VHD chain, without FUSE-mounting the chain.

Used by the demo and the guest tests to make a differencing child that replaces one guest file,
as an operator would through a writable mount: the volume is copied out of the chain into a
sparse scratch file, ntfs-3g (a real NTFS driver) replaces the file there, and exactly the
sectors that differ afterwards are written into the chain's top layer with `Chain.write`. The
child then holds what ntfs-3g changed: the file's new clusters, its MFT record, its directory's
index, the cluster bitmap.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tools.guestimage import _copy_sparse, _ntfs3g_mount
from vhdfs.chain import ZERO, Chain
from vhdfs.partitions import list_partitions

SECTOR = 512
STEP = 1024 * 1024


def _extract(chain: Chain, start: int, length: int, out: Path) -> None:
    """The volume's bytes into a sparse file (ranges the chain knows are zero stay holes)."""
    with open(out, "wb") as f:
        f.truncate(length)
        for ext in chain.iter_extents(start, length):
            if ext.layer == ZERO:
                continue
            for offset in range(ext.offset, ext.offset + ext.length, STEP):
                size = min(STEP, ext.offset + ext.length - offset)
                f.seek(offset - start)
                f.write(chain.read(offset, size))


def write_differences(chain: Chain, start: int, before: Path, after: Path) -> int:
    """Write the sectors where `after` differs from `before` into the chain at `start`."""
    written = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        offset = 0
        while True:
            old, new = a.read(STEP), b.read(STEP)
            if not new:
                break
            if old != new:
                for sector in range(0, len(new), SECTOR):
                    piece = new[sector:sector + SECTOR]
                    if old[sector:sector + SECTOR] != piece:
                        chain.write(start + offset + sector, piece)
                        written += 1
            offset += len(new)
    chain.flush()
    return written


def replace_ntfs_files(chain: Chain, volume: int, files: dict[str, bytes | None]) -> int:
    """Write `files` ({"inetpub/wwwroot/Welcome.png": bytes}, None deletes) into NTFS partition
    `volume` of a writable chain; returns how many sectors the top layer received."""
    part = next((p for p in list_partitions(chain) if p.number == volume), None)
    if part is None:
        raise ValueError(f"the disk has no partition {volume}")
    with tempfile.TemporaryDirectory(prefix=".guestedit-") as tmp:
        before, after = Path(tmp) / "before.ntfs", Path(tmp) / "after.ntfs"
        _extract(chain, part.start, part.length, before)
        fd = os.open(after, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, part.length)
            _copy_sparse(before, fd, 0)
        finally:
            os.close(fd)
        with _ntfs3g_mount(after, Path(tmp) / "mnt") as mnt:
            for rel, data in files.items():
                target = mnt.joinpath(*rel.strip("/").split("/"))
                if data is None:
                    target.unlink()
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return write_differences(chain, part.start, before, after)
