"""What `vhdfs info` reports about each layer of a chain."""

from __future__ import annotations

from typing import Any

from vhdfs.chain import Chain, ParentLink
from vhdfs.maintain.journals import commit_state
from vhdfs.maintain.journals_vhdx import commit_state as vhdx_commit_state


def layer_facts(chain: Chain) -> list[dict[str, Any]]:
    """One dict per layer, top first: what the layer says of itself (`describe`), where its
    parent was found, and an unfinished commit into it."""
    facts = []
    for depth, layer in enumerate(chain.layers):
        item = layer.describe()
        if layer.is_differencing and depth < len(chain.links):
            item = _with_parent_found(item, chain.links[depth])
        state_of = vhdx_commit_state if layer.image_format == "VHDX" else commit_state
        unfinished = state_of(layer.name, layer.commit_mark)
        if unfinished:  # an interrupted vhdfs commit into it
            item["commit_in_progress"] = unfinished
        facts.append(item)
    return facts


def _with_parent_found(item: dict[str, Any], link: ParentLink) -> dict[str, Any]:
    """`item` with how the parent was found, right after the locators that led there."""
    found = {"path": link.path, "by": link.found_by, "hint": link.hint}
    if "locators" not in item:
        return item | {"parent_found": found}
    out: dict[str, Any] = {}
    for key, value in item.items():
        out[key] = value
        if key == "locators":
            out["parent_found"] = found
    return out
