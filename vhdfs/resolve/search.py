"""What the local and the blob parent searches share: the attempt at each candidate.

Local and remote resolution differ in where they look (vhdfs.resolve.local, .blob); this is
what they share: open, refuse a loop, check format, identity and size, and (when nothing
fits) one error that names every place tried and what was wrong with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

from vhdfs.chain import ParentLink
from vhdfs.errors import (
    ChainCycle,
    FormatError,
    ImageBusy,
    ParentMismatch,
    ParentNotFound,
    VhdfsError,
)
from vhdfs.image import ImageLayer
from vhdfs.resolve.opening import OpenOptions, open_layer
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile

log = logging.getLogger("vhdfs")


def windows_parts(text: str) -> list[str]:
    """The names of a path written the Windows or the POSIX way (no empty or "." parts)."""
    return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]


def basename(text: str) -> str:
    """The file name of a path written the Windows or the POSIX way ("" for none)."""
    parts = windows_parts(text)
    return parts[-1] if parts else ""


class ParentSearch:
    """The candidates for one child's parent, tried in order, and what each attempt found."""

    def __init__(self, child: ImageLayer, options: OpenOptions, seen: set) -> None:
        self.child = child
        self.options = options
        self.seen = seen
        self.expected = child.parent_id or b""
        self.tried: list[str] = []
        self.mismatches: list[str] = []
        self.cycle: str | None = None

    def consider(self, shown: str, open_candidate: Callable[[], Source],
                 explain: Callable[[VhdfsError], str] = str, note: str = "") -> ImageLayer | None:
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
        child_format, parent_format = child.image_format, parent.image_format
        if parent_format != child_format:
            # Hyper-V links a differencing disk only to a parent of its own format.
            self.mismatches.append(f"{shown} is a {parent_format} image, but a {child_format} "
                                   f"differencing disk can only have a {child_format} parent")
            source.close()
            return None
        # A VHDX child accepts either of its two linkages (parent_linkage, parent_linkage2).
        if parent.unique_id not in self._parent_ids:
            self.mismatches.append(
                f"{shown}{note} has unique id {child.format_id(parent.unique_id)}")
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
        return unique_id in self._parent_ids

    @property
    def _parent_ids(self) -> tuple[bytes, ...]:
        """The ids the parent may have (a VHDX child accepts either of its two linkages)."""
        return self.child.parent_ids or (self.expected,)

    def found(self, parent: ImageLayer, found_by: str, hint: str, shown: str
              ) -> tuple[ImageLayer, ParentLink]:
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
                f"{child.name}: expects parent id {child.format_id(expected)} "
                f"({wanted or 'no name'}), but " + "; ".join(self.mismatches) + "; give the "
                f"right parent with {parent_option} or re-link with vhdfs set-parent")
        if not self.tried and not child.locator_entries and not child.parent_name:
            raise ParentNotFound(
                f"{child.name}: differencing disk without parent locators or parent name "
                f"(parent id {child.format_id(expected)}); give the parent with {parent_option}")
        raise ParentNotFound(
            f"{child.name}: parent {wanted or child.format_id(expected)} not found (looked in: "
            + (", ".join(self.tried) or nothing) + f"); use {parent_option} or "
            f"{search_option}, or re-link with vhdfs set-parent")
