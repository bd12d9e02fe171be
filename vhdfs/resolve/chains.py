"""Open an image and resolve its parents into a Chain: local and blob layers alike.

Each differencing layer's parent is looked for by the search of where the layer is: next to
a local file (vhdfs.resolve.local) or in the container of a page blob (vhdfs.resolve.blob).
Either may lead to the other: a local child over a base in blob storage (MacX URL, a remote
--parent), a blob child over a local --parent.
"""

from __future__ import annotations

from vhdfs.azure.blob import BlobSource
from vhdfs.azure.uploadmark import refuse_incomplete
from vhdfs.chain import Chain, ParentLink
from vhdfs.errors import ChainTooDeep
from vhdfs.image import ImageLayer
from vhdfs.raw import RawLayer
from vhdfs.resolve.blob import find_blob_parent
from vhdfs.resolve.local import find_local_parent
from vhdfs.resolve.opening import OpenOptions, looks_like_vhd, open_layer, open_source


def open_chain(spec: str, options: OpenOptions | None = None, *, writable: bool = False,
               allow_raw: bool = False) -> Chain:
    """Open the image `spec` and its parents. Only the top layer may be writable."""
    options = options or OpenOptions()
    source = open_source(spec, writable=writable, force_share=options.force_share)
    try:
        if isinstance(source, BlobSource):  # cut off mid-upload: say how to finish it
            refuse_incomplete(source.name, source.metadata)
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


def find_parent(child: ImageLayer, options: OpenOptions, seen: set) -> tuple[ImageLayer, ParentLink]:
    """The parent layer of `child` and how it was found; `seen` holds the identities of the
    sources already in the chain (a candidate among them is a loop)."""
    if isinstance(child.source, BlobSource):  # a blob's parent is looked for in its container
        return find_blob_parent(child.source, child, options, seen)
    return find_local_parent(child, options, seen)
