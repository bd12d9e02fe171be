"""Open an image and resolve its parents into a Chain.

Where a differencing disk's parent is looked for, in order:
  1. `--parent PATH` overrides (any of them whose unique id matches),
  2. relative locators (W2ru, Wi2r) against the child's own folder,
  3. absolute locators (W2ku, Wi2k, MacX): a POSIX path as written, then the same file name
     next to the child (a `C:\\...` path means nothing on Linux),
  4. the header's parent name, next to the child,
  5. every `--search DIR`, by each file name the hints mention.
The first candidate whose footer unique id equals the child's parent id is the parent. Paths
that come from inside an image are only followed when they name a regular file with an image
suffix: a locator naming `/etc/shadow`, a FIFO or a device is never opened.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NoReturn

from vhdfs.azure.location import looks_remote
from vhdfs.chain import Chain, ParentLink
from vhdfs.errors import (
    ChainCycle,
    ChainTooDeep,
    FormatError,
    ImageBusy,
    ParentMismatch,
    ParentNotFound,
    VhdfsError,
)
from vhdfs.raw import RawLayer
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile, describe_mode
from vhdfs.vhd.dynheader import printable
from vhdfs.vhd.footer import COOKIE, FOOTER_SIZE, format_unique_id
from vhdfs.vhd.layer import Layer
from vhdfs.vhdx.layer import VhdxLayer, is_vhdx

log = logging.getLogger("vhdfs")

MAX_CHAIN_DEPTH = 64
IMAGE_SUFFIXES = (".vhd", ".avhd", ".vhdx", ".avhdx")
# VHD locator codes, and the VHDX parent locator keys (vhdfs.vhdx.layer.PATH_KEYS)
RELATIVE_CODES = ("W2ru", "Wi2r", "relative_path")
ABSOLUTE_CODES = ("W2ku", "Wi2k", "MacX", "absolute_win32_path", "volume_path")


@dataclass
class OpenOptions:
    """Read options every command that opens an image takes."""

    parents: list[str] = field(default_factory=list)  # --parent PATH (repeatable)
    search: list[str] = field(default_factory=list)  # --search DIR (repeatable)
    size_rule: str = "auto"  # --size-rule auto|current|chs
    max_depth: int = MAX_CHAIN_DEPTH
    # --force-share: read layers a writer holds (None: the command's default, see
    # vhdfs.sources.locks). The writable top layer is always held exclusively.
    force_share: bool | None = None


def open_source(spec: str, *, writable: bool = False, force_share: bool | None = None) -> Source:
    """A local file (locked: vhdfs.sources.locks), or a page blob for `https://`, `http://`
    and `az://` specs (the Azure code is imported only when a blob is named)."""
    if looks_remote(spec):
        from vhdfs.azure.blob import open_blob_spec

        return open_blob_spec(spec, writable)
    return LocalFile(spec, writable=writable, force_share=force_share)


def looks_like_vhd(source: Source) -> bool:
    if is_vhdx(source):
        return True
    size = source.size()
    if size < FOOTER_SIZE:
        return False
    if source.read_at(size - FOOTER_SIZE, 8) == COOKIE:
        return True
    return source.read_at(0, 8) == COOKIE


def open_layer(source: Source, options: OpenOptions, *, writable: bool = False) -> Layer:
    if is_vhdx(source):
        return VhdxLayer(source, writable=writable)  # type: ignore[return-value]
    return Layer(source, size_rule=options.size_rule, writable=writable)


def open_chain(spec: str, options: OpenOptions | None = None, *, writable: bool = False,
               allow_raw: bool = False) -> Chain:
    """Open the image `spec` and its parents. Only the top layer may be writable."""
    options = options or OpenOptions()
    source = open_source(spec, writable=writable, force_share=options.force_share)
    try:
        if allow_raw and not writable and not looks_like_vhd(source):
            return Chain([RawLayer(source)])
        top = open_layer(source, options, writable=writable)
    except BaseException:
        source.close()
        raise
    layers: list = [top]
    links: list[ParentLink] = []
    try:
        seen = {source.identity()}
        while layers[-1].is_differencing:
            if len(layers) >= options.max_depth:  # one more would exceed it
                raise ChainTooDeep(
                    f"{top.name}: the chain is deeper than {options.max_depth} layers (at "
                    f"{layers[-1].name}); a parent loop or a runaway chain; check with vhdfs info")
            parent, link = find_parent(layers[-1], options, seen)
            seen.add(parent.source.identity())
            layers.append(parent)
            links.append(link)
    except BaseException:
        for layer in layers:
            layer.source.close()
        raise
    return Chain(layers, links)


@dataclass
class _Candidate:
    path: Path
    found_by: str
    hint: str
    from_image: bool  # named by the image itself (locator or parent name), not by the user


# scheme://... with a scheme of two letters or more (one letter is a drive: C:\\...)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def _windows_parts(text: str) -> list[str]:
    return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]


def _basename(text: str) -> str:
    parts = _windows_parts(text)
    return parts[-1] if parts else ""


def _candidates(child: Layer, options: OpenOptions) -> list[_Candidate]:
    base_dir = Path(child.name).parent
    # Remote --parent specs (a local child over a base in blob storage) are tried apart,
    # in find_parent: they are not paths.
    out: list[_Candidate] = [_Candidate(Path(p), "--parent", p, False) for p in options.parents
                             if not looks_remote(p)]
    names: list[str] = []
    entries = child.locator_entries
    for entry in sorted(entries, key=lambda e: e.code not in RELATIVE_CODES):
        text = entry.text
        if _URL.match(text) and not text.lower().startswith("file:"):
            continue  # a URL (http, https, smb...) is never fetched, nor mapped to a local name
        if entry.code in RELATIVE_CODES:
            parts = _windows_parts(text)
            if parts and not PureWindowsPath(text).drive and not text.startswith(("/", "\\")):
                out.append(_Candidate(base_dir.joinpath(*parts), entry.code, text, True))
        elif entry.code in ABSOLUTE_CODES:
            if entry.code == "MacX":
                parsed = urllib.parse.urlsplit(text)
                if parsed.scheme not in ("file", ""):
                    continue  # a URL of another kind is never fetched from a locator
                text = printable(urllib.parse.unquote(parsed.path)) if parsed.scheme else text
            if text.startswith("/") and not text.startswith("//"):
                out.append(_Candidate(Path(PurePosixPath(text)), entry.code, entry.text, True))
        name = _basename(text)
        if name:
            out.append(_Candidate(base_dir / name, entry.code, entry.text, True))
            names.append(name)
    if child.parent_name:
        name = _basename(child.parent_name)
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


def _id_text(layer: Layer, raw: bytes) -> str:
    """A unique id as the layer's format shows it (VHDX: Windows GUID text)."""
    return getattr(layer, "format_id", format_unique_id)(raw)


class ParentSearch:
    """The candidates for one child's parent, tried in order, and what each attempt found.

    Local and remote resolution differ in where they look; this is what they share: open,
    refuse a loop, check format, identity and size, and (when nothing fits) one error that
    names every place tried and what was wrong with it.
    """

    def __init__(self, child: Layer, options: OpenOptions, seen: set) -> None:
        self.child = child
        self.options = options
        self.seen = seen
        self.expected = child.parent_id or b""
        self.tried: list[str] = []
        self.mismatches: list[str] = []
        self.cycle: str | None = None

    def consider(self, shown: str, open_candidate: Callable[[], Source],
                 explain: Callable[[VhdfsError], str] = str, note: str = "") -> Layer | None:
        """The parent layer if this candidate is it, else None (the reason is kept; `note`
        says more about the candidate in an identity mismatch)."""
        child = self.child
        try:
            source = open_candidate()
        except ImageBusy:
            # Held by another process: if it is the parent, that is the answer (another
            # file with the same id further down the list must not stand in for it).
            if self._is_parent(shown):
                raise
            self.tried.append(f"{shown} (in use by another process, and not the parent)")
            return None
        except VhdfsError as exc:
            self.tried.append(f"{shown} ({explain(exc)})")
            return None
        if source.identity() in self.seen:
            source.close()
            self.cycle = shown
            return None
        try:
            parent = open_layer(source, self.options)
        except FormatError as exc:
            source.close()
            self.tried.append(f"{shown} (not a usable VHD: {exc.what})")
            return None
        except BaseException:
            source.close()
            raise
        child_format = getattr(child, "image_format", "VHD")
        parent_format = getattr(parent, "image_format", "VHD")
        if parent_format != child_format:
            # Hyper-V links a differencing disk only to a parent of its own format.
            self.mismatches.append(f"{shown} is a {parent_format} image, but a {child_format} "
                                   f"differencing disk can only have a {child_format} parent")
            source.close()
            return None
        # A VHDX child accepts either of its two linkages (parent_linkage, parent_linkage2).
        if parent.unique_id not in (getattr(child, "parent_ids", None) or (self.expected,)):
            self.mismatches.append(
                f"{shown}{note} has unique id {_id_text(child, parent.unique_id)}")
            source.close()
            return None
        if parent.size != child.size:
            source.close()
            raise ParentMismatch(
                f"{child.name}: parent {shown} is {parent.size} bytes but the child is "
                f"{child.size} bytes; the sizes must agree (was the parent resized?)")
        return parent

    def _is_parent(self, path: str) -> bool:
        """A glance, without a lock, at the unique id of a file another process holds."""
        try:
            with LocalFile(path, lock=None) as source:
                unique_id = open_layer(source, self.options).unique_id
        except (VhdfsError, OSError):
            return False
        return unique_id in (getattr(self.child, "parent_ids", None) or (self.expected,))

    def found(self, parent: Layer, found_by: str, hint: str, shown: str
              ) -> tuple[Layer, ParentLink]:
        if self.mismatches:  # e.g. the relative and the absolute locator name different files
            note = (f"{self.child.name}: parent {shown} (found by {found_by}) has the expected "
                    "unique id, but " + "; ".join(self.mismatches) + "; vhdfs set-parent "
                    "rewrites the locators")
            self.child.warnings.append(note)
            log.warning("%s", note)
        return parent, ParentLink(found_by, hint, shown,
                                  tuple(self.tried) + tuple(self.mismatches))

    def fail(self, *, parent_option: str = "--parent PATH", search_option: str = "--search DIR",
             nothing: str = "nothing: no locator names a local file") -> NoReturn:
        """Raise the error that says why no candidate was the parent."""
        child, expected = self.child, self.expected
        wanted = child.parent_name or (
            child.locator_entries[0].text if child.locator_entries else "")
        if self.cycle and not self.mismatches:
            raise ChainCycle(f"{child.name}: its parent {self.cycle} is already in the chain "
                             "(a parent loop); fix the link with vhdfs set-parent CHILD PARENT")
        if self.mismatches:
            raise ParentMismatch(
                f"{child.name}: expects parent id {_id_text(child, expected)} "
                f"({wanted or 'no name'}), but " + "; ".join(self.mismatches) + "; give the "
                f"right parent with {parent_option} or re-link with vhdfs set-parent")
        if not self.tried and not child.locator_entries and not child.parent_name:
            raise ParentNotFound(
                f"{child.name}: differencing disk without parent locators or parent name "
                f"(parent id {_id_text(child, expected)}); give the parent with {parent_option}")
        raise ParentNotFound(
            f"{child.name}: parent {wanted or _id_text(child, expected)} not found (looked in: "
            + (", ".join(self.tried) or nothing) + f"); use {parent_option} or "
            f"{search_option}, or re-link with vhdfs set-parent")


def find_parent(child: Layer, options: OpenOptions, seen: set) -> tuple[Layer, ParentLink]:
    resolver = getattr(child.source, "find_parent", None)
    if resolver is not None:  # remote sources resolve parents their own way
        return resolver(child, options, seen)
    search = ParentSearch(child, options, seen)
    for spec in options.parents:
        if looks_remote(spec):  # opened with that blob's own credential, lazily
            parent = search.consider(
                spec, lambda spec=spec: open_source(spec, force_share=options.force_share))
            if parent is not None:
                return search.found(parent, "--parent", spec, spec)
    for cand in _candidates(child, options):
        shown = str(cand.path)
        if cand.from_image and not cand.path.name.lower().endswith(IMAGE_SUFFIXES):
            search.tried.append(f"{shown} (from {cand.found_by}: not an image file name, "
                                "not opened)")
            continue
        if cand.from_image and cand.path.is_symlink():
            # A link may lead anywhere (shared bases often live elsewhere), but only to a file
            # named as an image: `base.vhd -> /etc/shadow` is not opened.
            target = Path(os.path.realpath(cand.path))
            if not target.name.lower().endswith(IMAGE_SUFFIXES):
                search.tried.append(f"{shown} (a link to {target}: not an image file name, "
                                    "not opened)")
                continue
        try:
            info = cand.path.stat()
        except OSError:
            search.tried.append(shown)
            continue
        if not stat.S_ISREG(info.st_mode):
            search.tried.append(f"{shown} ({describe_mode(info.st_mode)}, not opened)")
            continue
        parent = search.consider(shown, lambda path=cand.path: open_source(
            str(path), force_share=options.force_share))
        if parent is not None:
            return search.found(parent, cand.found_by, cand.hint, shown)
    for entry in child.locator_entries:  # a base in blob storage (vhdfs create --parent az://)
        if entry.code == "MacX" and looks_remote(entry.text):
            from vhdfs.azure.credentials import recorded_parent

            if recorded_parent(entry.text) is None:
                search.tried.append(f"{entry.text} (from MacX: a blob URL is only fetched on the "
                                    "account AZURE_STORAGE_CONNECTION_STRING or "
                                    "AZURE_STORAGE_ACCOUNT names)")
                continue
            parent = search.consider(entry.text, lambda url=entry.text: open_source(url))
            if parent is not None:
                return search.found(parent, "MacX", entry.text, entry.text)
    search.fail()
