"""vhdfs volumes IMAGE [--json]"""

from __future__ import annotations

import argparse

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.guest.volumes import open_volumes
from vhdfs.quoting import escape
from vhdfs.units import human


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("volumes", help="show the partition table and file systems",
                            description="Show the partition table (MBR or GPT) of the flat disk: "
                            "number, start, size, type, file system, label and boot flag of each "
                            "partition. A disk without a partition table whose whole disk is a "
                            "file system shows as volume 1.")
    parser.add_argument("image")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_image(args, args.image, allow_raw=True) as chain:
        disk = open_volumes(chain)
        table = disk.table
        rows = []
        for v in disk.volumes:
            part = v.partition
            rows.append({
                "number": v.number, "start": v.start, "size": v.length,
                "type": v.type_name, "type_code": part.type_code if part else None,
                "file_system": v.fs_type or None, "label": v.label, "uuid": v.uuid or None,
                "boot": v.bootable, "guid": part.guid if part else None,
                "name": part.name if part else "", "error": v.error or None,
            })
        if args.json:
            print_json({"size": chain.size, "scheme": table.scheme,
                        "disk_signature": f"0x{table.disk_signature:08X}"
                        if table.disk_signature is not None else None,
                        "disk_guid": table.disk_guid, "volumes": rows, "warnings": table.warnings})
            return 0
        head = {"mbr": "MBR", "gpt": "GPT", "none": "no partition table"}[table.scheme]
        if table.disk_signature is not None:
            head += f", disk signature 0x{table.disk_signature:08X}"
        if table.disk_guid:
            head += f", disk GUID {table.disk_guid}"
        print(f"disk: {human(chain.size)} ({chain.size} bytes), {head}")
        for warning in table.warnings:
            print(f"warning: {escape(warning, backslash=False)}")
        if not rows:
            print("no partitions, and the whole disk holds no file system TSK recognises")
            return 0
        table_rows = [("#", "start", "size", "type", "fs", "label", "flags")]
        for row in rows:
            flags = []
            if row["boot"]:
                flags.append("active" if table.scheme == "mbr" else "legacy-boot")
            table_rows.append((str(row["number"]), human(row["start"]), human(row["size"]),
                               escape(row["type"]), escape(row["file_system"] or "-"),
                               escape(row["label"] or "-"), ",".join(flags) or "-"))
        widths = [max(len(r[i]) for r in table_rows) for i in range(len(table_rows[0]))]
        for r in table_rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        for row in rows:
            if row["error"]:
                print(f"volume {row['number']}: {escape(row['error'], backslash=False)}")
    return 0
