"""Parents of blob layers: the link recorded on the blob, else the child's own container.

Where the parent of a differencing disk stored as a page blob is looked for, in order:
  1. `--parent SPEC` overrides (a blob spec or a local file),
  2. the link recorded in the child's metadata by `vhdfs set-parent` or `vhdfs upload`
     (`vhdfs_parent`: "CONTAINER/BLOB" on the child's own account, or a full URL),
  3. the relative locators (W2ru, Wi2r) resolved against the child's folder in its container,
  4. the file name of every locator and of the header's parent name, in the child's folder,
  5. every `--search` entry: a container or folder spec (az://CONTAINER/FOLDER, a URL), or a
     local folder, by each of those file names.
Locators never lead to local files or to another account: a path inside a blob is only ever
read as a name in the child's own container. Each candidate is opened with the credential of
its own endpoint (vhdfs.azure.credentials): a parent on another account or host never receives
the child's key or SAS. The first candidate whose footer unique id equals the child's parent id
is the parent.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from vhdfs.azure.blob import BlobSource
from vhdfs.azure.credentials import parse_location
from vhdfs.azure.links import recorded_link
from vhdfs.azure.location import BlobLocation, looks_remote
from vhdfs.chain import ParentLink
from vhdfs.errors import RemoteError, UsageError, VhdfsError
from vhdfs.image import ImageLayer
from vhdfs.resolve.opening import OpenOptions, open_source
from vhdfs.resolve.search import ParentSearch, basename, windows_parts
from vhdfs.sources.base import Source

RELATIVE_CODES = ("W2ru", "Wi2r")


@dataclass
class Candidate:
    spec: BlobLocation | str  # a blob location, or a local path / any spec from --parent
    found_by: str
    hint: str


def _relative_blob(folder: str, text: str) -> str | None:
    """A relative Windows path resolved against a virtual folder ("" or "a/b/")."""
    if PureWindowsPath(text).drive or text.startswith(("/", "\\")):
        return None
    parts = [p for p in folder.split("/") if p]
    for part in windows_parts(text):
        if part == "..":
            if not parts:
                return None  # above the container: never leaves it
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or None


def candidates(source: BlobSource, child: ImageLayer, options: OpenOptions) -> list[Candidate]:
    loc = source.location
    folder = loc.folder()
    out: list[Candidate] = [Candidate(p, "--parent", p) for p in options.parents]
    link = recorded_link(source)
    if link is not None:
        out.append(Candidate(link[0], "blob link", link[1]))
    names: list[str] = []
    for entry in sorted(child.locator_entries, key=lambda e: e.code not in RELATIVE_CODES):
        text = entry.text
        if entry.code == "MacX":
            text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
        if entry.code in RELATIVE_CODES:
            blob = _relative_blob(folder, text)
            if blob:
                out.append(Candidate(loc.sibling(blob), entry.code, entry.text))
        name = basename(text)
        if name:
            out.append(Candidate(loc.sibling(folder + name), entry.code, entry.text))
            names.append(name)
    if child.parent_name:
        name = basename(child.parent_name)
        if name:
            out.append(Candidate(loc.sibling(folder + name), "parent name", child.parent_name))
            names.append(name)
    for place in options.search:
        out += _searched(place, list(dict.fromkeys(names)))
    unique: dict[object, Candidate] = {}
    for cand in out:
        key = cand.spec.identity() if isinstance(cand.spec, BlobLocation) else ("spec", cand.spec)
        unique.setdefault(key, cand)
    return list(unique.values())


def _searched(place: str, names: list[str]) -> list[Candidate]:
    """The names in one --search place: a container or folder of blobs, or a local folder."""
    if not looks_remote(place):
        return [Candidate(str(Path(place) / name), "--search", place) for name in names]
    if not names:
        return []
    where = parse_location(place, want_blob=False)
    prefix = where.blob.rstrip("/") + "/" if where.blob else ""
    return [Candidate(where.sibling(prefix + name), "--search", place) for name in names]


def _open(cand: Candidate) -> Source:
    if isinstance(cand.spec, BlobLocation):
        return BlobSource(cand.spec)
    return open_source(cand.spec)


def _why(exc: VhdfsError) -> str:
    status = exc.status if isinstance(exc, RemoteError) else None
    if status == 404:
        return "not found"
    if status in (401, 403):
        return "access denied"
    return str(exc)


def _explain(exc: VhdfsError) -> str:
    return _why(exc) if isinstance(exc, (RemoteError, UsageError)) else str(exc)


def find_blob_parent(source: BlobSource, child: ImageLayer, options: OpenOptions, seen: set
                     ) -> tuple[ImageLayer, ParentLink]:
    """The parent layer of the remote layer `child` (see the module docstring)."""
    search = ParentSearch(child, options, seen)
    for cand in candidates(source, child, options):
        shown = cand.spec.display if isinstance(cand.spec, BlobLocation) else cand.spec
        note = " (recorded link)" if cand.found_by == "blob link" else ""
        parent = search.consider(shown, lambda cand=cand: _open(cand), _explain, note)
        if parent is not None:
            return search.found(parent, cand.found_by, cand.hint, shown)
    search.fail(parent_option="--parent SPEC", search_option="--search CONTAINER",
                nothing="nothing to try: no locators, parent name or link")
