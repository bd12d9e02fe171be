"""Opening an image and finding its parents, for local files and page blobs alike.

The one piece above both sources (vhdfs.sources, vhdfs.azure) and the formats:
  opening  a spec as a source (local file or page blob), a source as a layer of its format;
  search   what every parent search shares: try a candidate, keep why it was not the parent;
  local    where a local layer's parent is looked for (locators, names, --parent, --search);
  blob     where a blob layer's parent is looked for (its recorded link, its container);
  chains   an image and its parents as a Chain.
Callers import the names below from here.
"""

from vhdfs.resolve.chains import find_parent, open_chain
from vhdfs.resolve.local import IMAGE_SUFFIXES
from vhdfs.resolve.opening import MAX_CHAIN_DEPTH, OpenOptions, looks_like_vhd, open_layer, open_source

__all__ = ["IMAGE_SUFFIXES", "MAX_CHAIN_DEPTH", "OpenOptions", "find_parent", "looks_like_vhd",
           "open_chain", "open_layer", "open_source"]
