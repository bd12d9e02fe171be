"""vhdfs set-parent for a page blob: record on the child blob which blob is its parent.

A blob's locators cannot be rewritten in place the way set-parent rewrites a local file's
header; the link goes into the child's metadata instead (vhdfs.azure.links), after the two
identities are checked, and the parent search of blob layers reads it first.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.core import MatchConditions

from vhdfs.azure.blob import BlobSource
from vhdfs.azure.client import remote_errors
from vhdfs.azure.credentials import parse_location
from vhdfs.azure.links import LINK_ID_KEY, LINK_KEY, link_value
from vhdfs.azure.location import looks_remote
from vhdfs.errors import ParentMismatch, UsageError
from vhdfs.resolve import OpenOptions, open_layer
from vhdfs.vhd.footer import format_unique_id


@dataclass
class LinkResult:
    child: str
    parent: str
    value: str
    parent_id: str


def set_parent_remote(child_spec: str, parent_spec: str, *, size_rule: str = "auto") -> LinkResult:
    """Record on the child blob which blob is its parent, after checking their identities."""
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
