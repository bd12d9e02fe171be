"""Parents of local layers: the locators and names a differencing disk records, on this host.

Where a local differencing disk's parent is looked for, in order:
  1. `--parent PATH` overrides (any of them whose unique id matches; a blob spec too),
  2. relative locators (W2ru, Wi2r) against the child's own folder,
  3. absolute locators (W2ku, Wi2k, MacX): a POSIX path as written, then the same file name
     next to the child (a `C:\\...` path means nothing on Linux),
  4. the header's parent name, next to the child,
  5. every `--search DIR`, by each file name the hints mention,
  6. a MacX locator holding a blob URL (a base in blob storage, vhdfs create --parent az://),
     only on the account the environment holds credentials for.
The first candidate whose footer unique id equals the child's parent id is the parent. Paths
that come from inside an image are only followed when they name a regular file with an image
suffix: a locator naming `/etc/shadow`, a FIFO or a device is never opened.
"""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from vhdfs.azure.credentials import recorded_parent
from vhdfs.azure.location import looks_remote
from vhdfs.chain import ParentLink
from vhdfs.image import ImageLayer, LocatorEntry
from vhdfs.quoting import printable
from vhdfs.resolve.opening import OpenOptions, open_source
from vhdfs.resolve.search import ParentSearch, basename, windows_parts
from vhdfs.sources.local import describe_mode

IMAGE_SUFFIXES = (".vhd", ".avhd", ".vhdx", ".avhdx")
# VHD locator codes, and the VHDX parent locator keys (vhdfs.vhdx.layer.PATH_KEYS)
RELATIVE_CODES = ("W2ru", "Wi2r", "relative_path")
ABSOLUTE_CODES = ("W2ku", "Wi2k", "MacX", "absolute_win32_path", "volume_path")


@dataclass
class _Candidate:
    path: Path
    found_by: str
    hint: str
    from_image: bool  # named by the image itself (locator or parent name), not by the user


# scheme://... with a scheme of two letters or more (one letter is a drive: C:\\...)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def _candidates(child: ImageLayer, options: OpenOptions) -> list[_Candidate]:
    base_dir = Path(child.name).parent
    # Remote --parent specs (a local child over a base in blob storage) are tried apart,
    # in find_local_parent: they are not paths.
    out: list[_Candidate] = [_Candidate(Path(p), "--parent", p, False) for p in options.parents
                             if not looks_remote(p)]
    names: list[str] = []
    entries = child.locator_entries
    for entry in sorted(entries, key=lambda e: e.code not in RELATIVE_CODES):
        found, name = _locator_candidates(entry, base_dir)
        out += found
        if name:
            names.append(name)
    if child.parent_name:
        name = basename(child.parent_name)
        if name:
            out.append(_Candidate(base_dir / name, "parent name", child.parent_name, True))
            names.append(name)
    for folder in options.search:
        for name in dict.fromkeys(names):
            out.append(_Candidate(Path(folder) / name, "--search", folder, False))
    unique: dict[str, _Candidate] = {}
    for cand in out:
        unique.setdefault(os.path.normpath(str(cand.path)), cand)
    return list(unique.values())


def _locator_candidates(entry: LocatorEntry, base_dir: Path) -> tuple[list[_Candidate], str]:
    """The files one locator names (its path, then its file name beside the child), and
    that file name ("" for none)."""
    text = entry.text
    if _URL.match(text) and not text.lower().startswith("file:"):
        return [], ""  # a URL (http, https, smb...) is never fetched, nor mapped to a local name
    out: list[_Candidate] = []
    if entry.code in RELATIVE_CODES:
        parts = windows_parts(text)
        if parts and not PureWindowsPath(text).drive and not text.startswith(("/", "\\")):
            out.append(_Candidate(base_dir.joinpath(*parts), entry.code, text, True))
    elif entry.code in ABSOLUTE_CODES:
        if entry.code == "MacX":
            parsed = urllib.parse.urlsplit(text)
            if parsed.scheme not in ("file", ""):
                return [], ""  # a URL of another kind is never fetched from a locator
            text = printable(urllib.parse.unquote(parsed.path)) if parsed.scheme else text
        if text.startswith("/") and not text.startswith("//"):
            out.append(_Candidate(Path(PurePosixPath(text)), entry.code, entry.text, True))
    name = basename(text)
    if name:
        out.append(_Candidate(base_dir / name, entry.code, entry.text, True))
    return out, name


def find_local_parent(child: ImageLayer, options: OpenOptions, seen: set) -> tuple[ImageLayer, ParentLink]:
    """The parent layer of the local layer `child` (see the module docstring)."""
    search = ParentSearch(child, options, seen)
    for spec in options.parents:
        if looks_remote(spec):  # opened with that blob's own credential, lazily
            parent = search.consider(
                spec, lambda spec=spec: open_source(spec, force_share=options.force_share))
            if parent is not None:
                return search.found(parent, "--parent", spec, spec)
    for cand in _candidates(child, options):
        parent = _try_file(search, cand, options)
        if parent is not None:
            return search.found(parent, cand.found_by, cand.hint, str(cand.path))
    for entry in child.locator_entries:  # a base in blob storage (vhdfs create --parent az://)
        if entry.code == "MacX" and looks_remote(entry.text):
            parent = _try_blob_locator(search, entry)
            if parent is not None:
                return search.found(parent, "MacX", entry.text, entry.text)
    search.fail()


def _try_file(search: ParentSearch, cand: _Candidate, options: OpenOptions) -> ImageLayer | None:
    """The candidate file as the parent, if it is; why not is kept in `search`. A name from
    the image is opened only when it (and a link's target) is named as an image file, and
    only a regular file."""
    shown = str(cand.path)
    if cand.from_image and not cand.path.name.lower().endswith(IMAGE_SUFFIXES):
        search.tried.append(f"{shown} (from {cand.found_by}: not an image file name, "
                            "not opened)")
        return None
    if cand.from_image and cand.path.is_symlink():
        # A link may lead anywhere (shared bases often live elsewhere), but only to a file
        # named as an image: `base.vhd -> /etc/shadow` is not opened.
        target = Path(os.path.realpath(cand.path))
        if not target.name.lower().endswith(IMAGE_SUFFIXES):
            search.tried.append(f"{shown} (a link to {target}: not an image file name, "
                                "not opened)")
            return None
    try:
        info = cand.path.stat()
    except OSError:
        search.tried.append(shown)
        return None
    if not stat.S_ISREG(info.st_mode):
        search.tried.append(f"{shown} ({describe_mode(info.st_mode)}, not opened)")
        return None
    return search.consider(shown, lambda path=cand.path: open_source(
        str(path), force_share=options.force_share))


def _try_blob_locator(search: ParentSearch, entry: LocatorEntry) -> ImageLayer | None:
    """A MacX locator's blob URL as the parent: fetched only on the environment's account."""
    if recorded_parent(entry.text) is None:
        search.tried.append(f"{entry.text} (from MacX: a blob URL is only fetched on the "
                            "account AZURE_STORAGE_CONNECTION_STRING or "
                            "AZURE_STORAGE_ACCOUNT names)")
        return None
    return search.consider(entry.text, lambda url=entry.text: open_source(url))
