"""vhdfs upload SOURCE DEST [--concurrency N] [--resume] [--overwrite] [--verify] [--as-is]
[--patch-base BLOB] [--managed-disk]"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from vhdfs.cli.common import add_image_options, open_options
from vhdfs.cli.conventions import report as print_result


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "upload", help="upload a disk (or chain) to an Azure page blob: sparse, parallel, resumable",
        description="Upload SOURCE to the page blob DEST. A VHD chain (or raw image) goes up "
        "flattened as a fixed VHD: only ranges that hold data are sent, then the footer. "
        "DEST is https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB[?SAS], an Azurite URL, "
        "or az://CONTAINER/BLOB with the account from AZURE_STORAGE_CONNECTION_STRING (or "
        "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY; else azure-identity's default "
        "credential). The source's size, time and digest are recorded in the blob's metadata "
        "last, as the mark of a complete upload.")
    parser.add_argument("source", help="a VHD (the chain is followed), a raw image, or any file")
    parser.add_argument("dest", help="the page blob to write")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="parallel write requests (default 8); writes of at most 64 KiB "
                        "go up to 4 x N at once")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted upload of the same source")
    parser.add_argument("--overwrite", action="store_true", help="replace DEST if it exists")
    parser.add_argument("--verify", action="store_true",
                        help="read every written range back and compare digests")
    parser.add_argument("--as-is", action="store_true",
                        help="upload the file itself (a dynamic or differencing VHD stays one)")
    parser.add_argument("--patch-base", metavar="BLOB",
                        help="DEST becomes a server-side copy of BLOB (the fixed-VHD blob of "
                        "SOURCE's parent) plus only the sectors SOURCE holds")
    parser.add_argument("--managed-disk", action="store_true",
                        help="DEST is a managed disk's upload URL (az disk grant-access "
                        "--access-level Write); found from its md-... host without this option: "
                        "the blob exists, is not created, leased or given metadata, and its size "
                        "must be the fixed VHD's")
    parser.add_argument("--skip-free", action="store_true",
                        help="send the clusters no file uses (free space of NTFS, FAT, exFAT "
                        "and ext file systems, as The Sleuth Kit reads them) as zeros: neither "
                        "read nor sent, so deleted data does not go up; partition tables, gaps "
                        "and other file systems go as they are")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vhdfs.upload.upload import UploadOptions, describe, upload

    options = UploadOptions(concurrency=args.concurrency, resume=args.resume,
                            overwrite=args.overwrite, verify=args.verify, as_is=args.as_is,
                            patch_base=args.patch_base, open_options=open_options(args),
                            skip_free=args.skip_free,
                            quiet=args.quiet, managed_disk=args.managed_disk)

    def note(text: str) -> None:
        if not args.quiet:
            print(f"vhdfs: {text}", file=sys.stderr)

    report = upload(args.source, args.dest, options, on_note=note)
    for text in report.notes:
        note(text)
    # The URL in `dest` keeps no query (no SAS): the upload stores and reports it that way.
    print_result(args, {**dataclasses.asdict(report), "skipped": report.skipped},
                 describe(report))
    return 0
