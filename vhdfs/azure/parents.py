"""Parents of remote layers: the link recorded on the blob, else the child's own container.

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

from vhdfs.azure.credentials import parse_location
from vhdfs.azure.location import BlobLocation, looks_remote, parse_blob_url
from vhdfs.chain import ParentLink
from vhdfs.errors import (
    FormatError,
    ParentMismatch,
    RemoteError,
    UsageError,
    VhdfsError,
)
from vhdfs.resolve import OpenOptions, ParentSearch, open_layer
from vhdfs.vhd.footer import format_unique_id
from vhdfs.vhd.layer import Layer

LINK_KEY = "vhdfs_parent"
LINK_ID_KEY = "vhdfs_parent_id"
RELATIVE_CODES = ("W2ru", "Wi2r")


@dataclass
class Candidate:
    spec: BlobLocation | str  # a blob location, or a local path / any spec from --parent
    found_by: str
    hint: str


def link_value(child: BlobLocation, parent: BlobLocation) -> str:
    """What the child's metadata records: CONTAINER/BLOB on the same account, else the URL.

    A same-account link stays valid when the account is reached through another endpoint
    form (az://, another emulator port); metadata is ASCII, so names are percent-encoded.
    """
    if parent.same_account(child):
        return urllib.parse.quote(f"{parent.container}/{parent.blob}", safe="/")
    return parent.url


def parse_link(child: BlobLocation, value: str) -> BlobLocation:
    if value.lower().startswith(("https://", "http://")):
        return parse_blob_url(value).without_sas()
    container, _, blob = urllib.parse.unquote(value).partition("/")
    if not container or not blob:
        raise FormatError(child.display, f"metadata {LINK_KEY}={value!r} is not CONTAINER/BLOB "
                          "or a blob URL", "re-link with vhdfs set-parent CHILD PARENT")
    return child.sibling(blob, container)


def _windows_parts(text: str) -> list[str]:
    return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]


def _relative_blob(folder: str, text: str) -> str | None:
    """A relative Windows path resolved against a virtual folder ("" or "a/b/")."""
    if PureWindowsPath(text).drive or text.startswith(("/", "\\")):
        return None
    parts = [p for p in folder.split("/") if p]
    for part in _windows_parts(text):
        if part == "..":
            if not parts:
                return None  # above the container: never leaves it
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or None


def _basename(text: str) -> str:
    parts = _windows_parts(text)
    return parts[-1] if parts else ""


def candidates(source, child: Layer, options) -> list[Candidate]:  # noqa: ANN001
    loc: BlobLocation = source.location
    folder = loc.folder()
    out: list[Candidate] = [Candidate(p, "--parent", p) for p in options.parents]
    link = getattr(source, "metadata", {}).get(LINK_KEY)
    if link:
        out.append(Candidate(parse_link(loc, link), "blob link", link))
    names: list[str] = []
    for entry in sorted(child.locator_entries, key=lambda e: e.code not in RELATIVE_CODES):
        text = entry.text
        if entry.code == "MacX":
            text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
        if entry.code in RELATIVE_CODES:
            blob = _relative_blob(folder, text)
            if blob:
                out.append(Candidate(loc.sibling(blob), entry.code, entry.text))
        name = _basename(text)
        if name:
            out.append(Candidate(loc.sibling(folder + name), entry.code, entry.text))
            names.append(name)
    if child.parent_name:
        name = _basename(child.parent_name)
        if name:
            out.append(Candidate(loc.sibling(folder + name), "parent name", child.parent_name))
            names.append(name)
    for place in options.search:
        for name in dict.fromkeys(names):
            if looks_remote(place):
                where = parse_location(place, want_blob=False)
                prefix = where.blob.rstrip("/") + "/" if where.blob else ""
                out.append(Candidate(where.sibling(prefix + name), "--search", place))
            else:
                out.append(Candidate(str(Path(place) / name), "--search", place))
    unique: dict[object, Candidate] = {}
    for cand in out:
        key = cand.spec.identity() if isinstance(cand.spec, BlobLocation) else ("spec", cand.spec)
        unique.setdefault(key, cand)
    return list(unique.values())


def _open(cand: Candidate):  # noqa: ANN202
    if isinstance(cand.spec, BlobLocation):
        from vhdfs.azure.blob import BlobSource

        return BlobSource(cand.spec), cand.spec.display
    from vhdfs.resolve import open_source

    return open_source(cand.spec), cand.spec


def _why(exc: VhdfsError) -> str:
    status = getattr(exc, "status", None)
    if status == 404:
        return "not found"
    if status in (401, 403):
        return "access denied"
    return str(exc)


def _explain(exc: VhdfsError) -> str:
    return _why(exc) if isinstance(exc, (RemoteError, UsageError)) else str(exc)


def find_blob_parent(source, child: Layer, options, seen: set) -> tuple[Layer, ParentLink]:  # noqa: ANN001
    """The parent layer of the remote layer `child` (see the module docstring)."""
    search = ParentSearch(child, options, seen)
    for cand in candidates(source, child, options):
        shown = cand.spec.display if isinstance(cand.spec, BlobLocation) else cand.spec
        note = " (recorded link)" if cand.found_by == "blob link" else ""
        parent = search.consider(shown, lambda cand=cand: _open(cand)[0], _explain, note)
        if parent is not None:
            return search.found(parent, cand.found_by, cand.hint, shown)
    search.fail(parent_option="--parent SPEC", search_option="--search CONTAINER",
                nothing="nothing to try: no locators, parent name or link")


# ---------------------------------------------------------------- vhdfs set-parent (remote)
@dataclass
class LinkResult:
    child: str
    parent: str
    value: str
    parent_id: str


def set_parent_remote(child_spec: str, parent_spec: str, *, size_rule: str = "auto") -> LinkResult:
    """Record on the child blob which blob is its parent, after checking their identities."""
    from azure.core import MatchConditions

    from vhdfs.azure.blob import BlobSource
    from vhdfs.azure.client import remote_errors

    if not looks_remote(parent_spec):
        raise UsageError(f"{parent_spec}: the parent of a blob must be a blob too (az://CONTAINER/"
                         "BLOB or a URL); a local parent is given per command with --parent")
    child_loc, parent_loc = parse_location(child_spec), parse_location(parent_spec)
    if child_loc.identity() == parent_loc.identity():
        raise UsageError(f"{child_loc.display}: a disk cannot be its own parent")
    with BlobSource(child_loc) as child_source, BlobSource(parent_loc) as parent_source:
        options = OpenOptions(size_rule=size_rule)
        child = open_layer(child_source, options)
        if not child.is_differencing:
            raise UsageError(f"{child_loc.display}: is a {child.disk_type.name.lower()} disk, not "
                             "a differencing disk: it has no parent to link")
        parent = open_layer(parent_source, options)
        if parent.unique_id != child.parent_id:
            raise ParentMismatch(
                f"{child_loc.display}: expects parent id {format_unique_id(child.parent_id or b'')}"
                f" ({child.parent_name or 'no name'}), but {parent_loc.display} has unique id "
                f"{format_unique_id(parent.unique_id)}; link the blob uploaded from that parent "
                "(a plain vhdfs upload keeps the top layer's unique id)")
        if parent.size != child.size:
            raise ParentMismatch(f"{child_loc.display}: is {child.size} bytes but "
                                 f"{parent_loc.display} is {parent.size} bytes; the sizes must "
                                 "agree")
        value = link_value(child_loc, parent_loc)
        metadata = dict(child_source.metadata)
        metadata[LINK_KEY] = value
        metadata[LINK_ID_KEY] = parent.unique_id.hex()
        blob = child_source.blob
        with remote_errors(child_loc.display, "recording the parent link", blob.secrets):
            blob.client.set_blob_metadata(metadata, etag=blob.etag,
                                          match_condition=MatchConditions.IfNotModified)
    return LinkResult(child_loc.display, parent_loc.display, value,
                      format_unique_id(parent.unique_id))
