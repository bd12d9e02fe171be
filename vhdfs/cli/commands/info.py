"""vhdfs info IMAGE [--json]"""

from __future__ import annotations

import argparse

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.info import layer_facts
from vhdfs.maintain.journals import describe_state
from vhdfs.quoting import escape
from vhdfs.units import human
from vhdfs.vhd.footer import MAX_GEOMETRY


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="show every layer of a chain, top first",
                            description="Show every layer of the chain, top first: path, type, "
                            "size, block size, identities, where each parent was found.")
    parser.add_argument("image")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_image(args, args.image) as chain:
        facts = layer_facts(chain)
        if args.json:
            print_json({"virtual_size": chain.size, "layers": facts})
            return 0
        print(f"chain: {len(facts)} layer(s), virtual size {chain.size} bytes "
              f"({human(chain.size)})")
        for depth, item in enumerate(facts):
            role = "top" if depth == 0 else ("base" if depth == len(facts) - 1 else "parent")
            print(f"\n[{depth}] {escape(item['path'], backslash=False)} ({role})")
            rows = [("type", item["disk_type"]),
                    ("virtual size", f"{item['virtual_size']} ({human(item['virtual_size'])})")]
            if item["disk_type"] != "raw":
                geometry_says = item["geometry"] != list(MAX_GEOMETRY)  # max: "use the size"
                if item["current_size"] != item["virtual_size"] or (
                        geometry_says and item["chs_size"] != item["virtual_size"]):
                    rows.append(("size note", f"footer current size {item['current_size']}, CHS "
                                 f"{'/'.join(map(str, item['geometry']))} = {item['chs_size']}; "
                                 "see --size-rule"))
                if item["block_size"]:
                    rows.append(("block size", human(item["block_size"])))
                    rows.append(("allocated", f"{item['allocated_blocks']} of {item['blocks']} "
                                 "blocks"))
                rows += [("unique id", item["unique_id"]), ("creator", item["creator"]),
                         ("created", item["created"])]
                if "parent_id" in item:
                    rows.append(("parent id", item["parent_id"]))
                    rows.append(("parent name", item["parent_name"] or "(none)"))
                    for loc in item["locators"]:
                        rows.append((f"locator {loc['code']}", loc["path"]))
                    found = item.get("parent_found")
                    if found:
                        rows.append(("parent found", f"{found['path']} (by {found['by']})"))
                if item.get("damaged_blocks"):
                    rows.append(("damaged", f"{len(item['damaged_blocks'])} block(s): "
                                 "run vhdfs check"))
                if item.get("commit_in_progress"):
                    rows.append(("mid-commit", describe_state(item["path"], item["commit_in_progress"])))
            for key, value in rows:  # names and Windows paths: control characters escaped
                print(f"  {key:<14} {escape(str(value), backslash=False)}")
    return 0
