"""vhdfs verify IMAGE [--profile NAME] [--profile-file FILE] [--json]"""

from __future__ import annotations

import argparse

from vhdfs.cli.common import add_image_options, open_image
from vhdfs.cli.conventions import print_json
from vhdfs.guest.verify import verify
from vhdfs.quoting import escape

LABELS = {"pass": "ok", "fail": "FAIL", "warn": "warn", "info": "info"}
PASSED = "Successfully passed the verification tests."
FAILED = "Failed the verification tests."


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify", help="check an image is ready for Azure (chain, agent, boot, guest OS, size)",
        description="Check that an image is ready to upload to Azure: the chain is intact, an "
        "Azure agent is installed (and which version) on the volume the disk boots, the guest "
        "OS is prepared as Azure's guides ask (Windows: generalized, shut down cleanly, RDP, "
        "DHCP...; Linux: kernel, initrd with the Hyper-V drivers, provisioning agent, fstab, "
        "deprovisioned...), and the disk as vhdfs upload sends it (a fixed VHD) meets Azure's "
        "size rules. Exit status 0 when no check fails, 1 when one fails.")
    parser.add_argument("image")
    parser.add_argument("--profile", action="append", metavar="NAME",
                        help="the verify profile (azure-windows-generalized, the default for "
                        "Windows; azure-windows-specialized; azure-linux-generalized, the "
                        "default for Linux; azure-linux-specialized; vm-role), and/or only "
                        "these agent profiles (repeatable): windows-guest-agent, vm-role-agent, "
                        "linux-agent, or one from --profile-file")
    parser.add_argument("--profile-file", action="append", default=[], metavar="FILE",
                        help="a verify profile ([profile] and [checks], as vhdfs/data/profiles/"
                        "*.toml; used unless --profile names another) and/or more agent "
                        "profiles ([[agent]], as vhdfs/data/agents.toml); same ids replace "
                        "packaged ones")
    add_image_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = verify(lambda: open_image(args, args.image, allow_raw=True), args.image,
                    profiles=args.profile, profile_files=args.profile_file)
    if args.json:
        print_json(report.to_json())
    else:
        # Findings are sentences that quote guest names and labels, and Windows paths:
        # control characters are escaped, backslashes left as they are.
        print(f"verify {escape(args.image, backslash=False)}")
        for finding in report.findings:
            print(f"  {LABELS[finding.status]:<4}  {finding.check}: "
                  f"{escape(finding.message, backslash=False)}")
            if finding.fix and finding.status in ("fail", "warn"):
                print(f"        fix: {escape(finding.fix, backslash=False)}")
        print(PASSED if report.passed else FAILED)
    return 0 if report.passed else 1
