"""What `vhdfs info` reports about each layer of a chain."""

from __future__ import annotations

from typing import Any

from vhdfs.chain import Chain
from vhdfs.maintain.journals import commit_state
from vhdfs.raw import RawLayer
from vhdfs.vhd.footer import format_unique_id
from vhdfs.vhd.timestamp import vhd_to_iso


def layer_facts(chain: Chain) -> list[dict[str, Any]]:
    """One dict per layer, top first."""
    facts = []
    for depth, layer in enumerate(chain.layers):
        if isinstance(layer, RawLayer):
            facts.append({"path": layer.name, "disk_type": "raw", "virtual_size": layer.size})
            continue
        describe = getattr(layer, "describe", None)
        if describe is not None:  # formats that describe themselves (VHDX)
            item = describe()
            if layer.is_differencing and depth < len(chain.links):
                link = chain.links[depth]
                item["parent_found"] = {"path": link.path, "by": link.found_by, "hint": link.hint}
            facts.append(item)
            continue
        footer = layer.footer
        item: dict[str, Any] = {
            "path": layer.name,
            "disk_type": layer.disk_type.name.lower(),
            "virtual_size": layer.size,
            "current_size": footer.current_size,
            "chs_size": footer.chs_size,
            "geometry": [footer.cylinders, footer.heads, footer.sectors_per_track],
            "block_size": layer.block_size or None,
            "unique_id": format_unique_id(layer.unique_id),
            "created": vhd_to_iso(footer.timestamp),
            "creator": footer.creator,
            "file_size": layer.source.size(),
        }
        if layer.header is not None:
            item["blocks"] = layer.block_count
            item["allocated_blocks"] = layer.allocated_blocks()
        if layer.bad_blocks:
            item["damaged_blocks"] = sorted(layer.bad_blocks)
        if layer.is_differencing:
            item["parent_id"] = format_unique_id(layer.parent_id or b"")
            item["parent_name"] = layer.parent_name
            item["parent_timestamp"] = vhd_to_iso(layer.header.parent_timestamp)
            item["locators"] = [{"index": e.index, "code": e.code, "path": e.text}
                                for e in layer.locator_entries]
            if depth < len(chain.links):
                link = chain.links[depth]
                item["parent_found"] = {"path": link.path, "by": link.found_by, "hint": link.hint}
        if layer.warnings:
            item["warnings"] = list(layer.warnings)
        unfinished = commit_state(layer.name, footer)  # an interrupted vhdfs commit into it
        if unfinished:
            item["commit_in_progress"] = unfinished
        facts.append(item)
    return facts
