"""Open one image file, local or in blob storage, as a source and as a layer of its format."""

from __future__ import annotations

from dataclasses import dataclass, field

from vhdfs.azure.blob import open_blob_spec
from vhdfs.azure.location import looks_remote
from vhdfs.image import ImageLayer
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.footer import COOKIE, FOOTER_SIZE
from vhdfs.vhd.layer import Layer
from vhdfs.vhdx.layer import VhdxLayer, is_vhdx

MAX_CHAIN_DEPTH = 64


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
    and `az://` specs (the Azure SDK is imported only when a blob is opened)."""
    if looks_remote(spec):
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


def open_layer(source: Source, options: OpenOptions, *, writable: bool = False) -> ImageLayer:
    if is_vhdx(source):
        return VhdxLayer(source, writable=writable)
    return Layer(source, size_rule=options.size_rule, writable=writable)
