"""Uploading straight into a managed disk, as Add-AzVhd and AzCopy do.

The documented way to bring a VHD into Azure today: `az disk create --upload-type Upload
--upload-size-bytes N` makes an empty disk whose hidden page blob is exactly N bytes (the
fixed VHD: virtual size plus the 512-byte footer); `az disk grant-access --access-level
Write` hands out a SAS URL on a host like `md-impexp-XXXX.zNN.blob.storage.azure.net`;
the client writes pages; `az disk revoke-access` turns the blob into the disk.

That endpoint takes page writes, reads and page-range listings only: the blob is never
created or deleted, and there is no lease, no metadata and no Content-MD5 on writes (AzCopy
turns transactional MD5 off there). So an upload into it:
  - checks the blob's size before any write (a mismatch says which `az disk create` fits);
  - writes the footer last, once every data page is in: the footer is the completion mark;
  - keeps its resume record here, on this machine (`RECORD_DIR`): a small JSON file per
    disk, named by the blob's URL without its query and holding nothing secret (the URL
    without query, the source's name and fingerprint, the state, the digest);
  - gets its integrity from `--verify`, which reads every written range back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vhdfs.azure.location import BlobLocation
from vhdfs.errors import ImageIOError, UsageError
from vhdfs.units import human

FOOTER = 512


def record_dir() -> Path:
    """Where resume records live: $XDG_CACHE_HOME/vhdfs/uploads (~/.cache/vhdfs/uploads)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vhdfs" / "uploads"


def record_path(dest: BlobLocation) -> Path:
    """The record of an upload to `dest`: named by its URL without the query (readable, cut
    to a safe length, with a hash of the whole URL to keep names apart)."""
    url = dest.url  # never the SAS
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_")[:120]
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return record_dir() / f"{readable}-{tag}.json"


@dataclass
class UploadRecord:
    url: str  # without query
    mode: str
    source: str
    source_id: str  # the source's fingerprint (vhdfs.upload.source), or watch.RESTART
    blob_size: int
    state: str  # "uploading" or "complete"
    started: str
    digest: str = ""
    data_bytes: int = 0
    completed: str = ""


def read_record(dest: BlobLocation) -> UploadRecord | None:
    path = record_path(dest)
    try:
        fields = json.loads(path.read_text("utf-8"))
        return UploadRecord(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ImageIOError(f"{path}: the resume record of {dest.display} cannot be read "
                           f"({exc}); remove it and upload again without --resume") from None


def write_record(dest: BlobLocation, record: UploadRecord) -> None:
    """Replace the record atomically (a crash leaves the old one or the new one)."""
    path = record_path(dest)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(record), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ImageIOError(f"{path}: cannot write the resume record of {dest.display} ({exc}); "
                           "--resume needs it: free the space or fix the folder's "
                           "permissions") from None


def _generation_option(generation: str | None) -> str:
    """az disk create's option for an OS disk of this partition table (a GPT disk only boots
    on a generation 2 VM, and a disk's generation is set when it is created)."""
    return f" --hyper-v-generation {generation}" if generation else ""


def check_disk_size(name: str, found: int, needed: int, generation: str | None = None) -> None:
    """The disk's blob must be exactly the fixed VHD's size: say which disk would fit."""
    if found == needed:
        return
    raise UsageError(
        f"{name}: the managed disk takes {found} bytes ({human(found)}), but this disk as a fixed "
        f"VHD is {needed} bytes (virtual size {needed - FOOTER} + the {FOOTER}-byte footer); "
        f"nothing was written; create a disk that fits: az disk create --resource-group RG "
        f"--name DISK --upload-type Upload --upload-size-bytes {needed}"
        f"{_generation_option(generation)} (then az disk "
        "grant-access --resource-group RG --name DISK --access-level Write --duration-in-seconds "
        "86400 for the URL)")


def follow_up(dest: BlobLocation, generation: str | None = None) -> list[str]:
    """What to run once the disk holds the upload (printed at the end)."""
    notes = [
        f"{dest.display}: the managed disk holds the upload; next, revoke the write access "
        "(the disk cannot be attached while it is open for upload): az disk revoke-access "
        "--resource-group RG --name DISK",
        "then use it: az vm create --resource-group RG --name VM --attach-os-disk DISK "
        "--os-type Windows (or Linux), or make an image of it: az snapshot create "
        "--resource-group RG --name SNAP --source DISK, then az sig image-version create ... "
        "--os-snapshot SNAP (see docs/azure.md)",
    ]
    if generation == "V2":
        notes.append("the disk has a GPT partition table: it boots only on a generation 2 VM "
                     "(UEFI); the disk must have been created with --hyper-v-generation V2, and "
                     "an image definition made from it needs --hyper-v-generation V2 too")
    return notes
