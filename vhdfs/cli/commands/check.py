"""vhdfs check IMAGE [--repair] [--dry-run] [--json]"""

from __future__ import annotations

import argparse

from vhdfs.cli.common import add_image_options, open_options
from vhdfs.cli.conventions import fail, print_json
from vhdfs.errors import ImageBusy, UsageError, VhdfsError
from vhdfs.maintain.check import EXIT_UNCHECKED, CheckReport, LayerReport, check_image


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "check", help="check an image and its chain; --repair mends what needs no guessing",
        description="Check the structure of IMAGE (VHD: footer and its copy, checksums, header, "
        "BAT, bitmaps, locators, timestamps; VHDX: headers, log, region tables, metadata, "
        "parent locator, BAT, sector bitmaps; both: unfinished commits) and every link of its "
        "chain. "
        "--repair mends IMAGE where no data has to be guessed and reports every change. "
        "Exit codes as fsck: 0 clean, 1 problems repaired, 4 problems left, 8 could not check; "
        "9: in use by another process (a writer; with --repair, anyone), not checked. "
        "--force-share checks a chain a writer holds and names the writer in the report.")
    parser.add_argument("image")
    parser.add_argument("--repair", action="store_true", help="mend IMAGE (not its parents)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show the repairs --repair would make, write nothing")
    add_image_options(parser)
    parser.set_defaults(func=run)


def render(report: CheckReport) -> None:
    for depth, layer in enumerate(report.layers):
        _render_layer(report, depth, layer)
    problems = sum(len(layer.problems) for layer in report.layers)
    repaired = sum(len(layer.repaired) for layer in report.layers)
    summary = {"clean": "clean", "repaired": f"{repaired} problem(s) repaired",
               "problems": f"{problems} problem(s) left" + (f", {repaired} repaired" if repaired else ""),
               "unchecked": "could not check",
               "in-use": "in use by another process, not checked"}[report.status]
    writers = list(dict.fromkeys(layer.written_by for layer in report.layers if layer.written_by))
    if writers and report.status != "in-use":
        summary += (f" (as read while {'; '.join(writers)} wrote it: what was read may be "
                    "inconsistent)")
    print(f"{report.image}: {summary} (exit {report.exit_code})")


def _render_layer(report: CheckReport, depth: int, layer: LayerReport) -> None:
    kind = f"{layer.disk_type}, " if layer.disk_type else ""
    how = f", found by {layer.found_by}" if layer.found_by else ""
    print(f"[{depth}] {layer.path} ({kind}{layer.role}{how})")
    if layer.in_use:
        print(f"  not checked: {layer.in_use}")
    if layer.written_by:
        print(f"  note     {layer.written_by} is writing it: read with --force-share, what "
              "was read may be a state the writer is half way through")
    if layer.unchecked:
        print(f"  could not check: {layer.unchecked}")
    for finding in layer.findings:
        print(f"  {finding.severity:<8} {finding.message}")
        if finding.fix is not None:
            print(f"           {_repair_line(report, layer, finding.fix.action, finding.repaired)}")
        elif finding.hint and finding.severity == "error":
            print(f"           to do: {finding.hint}")
    if not layer.findings and not layer.unchecked and not layer.in_use:
        print("  clean, as read under a writer" if layer.written_by else "  clean")


def _repair_line(report: CheckReport, layer: LayerReport, action: str, repaired: bool) -> str:
    if repaired:
        return f"repaired: {action}"
    if report.dry_run:
        return f"would repair: {action}"
    if layer.role == "parent":
        return f"repairable: vhdfs check --repair {layer.path}"
    return f"repairable: {action} (--repair)"


def run(args: argparse.Namespace) -> int:
    if args.repair and not args.dry_run and args.force_share:
        raise UsageError("--force-share is for reading: check --repair writes IMAGE and holds "
                         "it alone (check without --repair reads it under a writer)")
    try:
        report = check_image(args.image, open_options(args), repair=args.repair or args.dry_run,
                             dry_run=args.dry_run)
    except ImageBusy as exc:
        return fail(str(exc), exc.exit_code, type(exc).__name__, args.json)
    except VhdfsError as exc:  # fsck's code: could not check
        return fail(str(exc), EXIT_UNCHECKED, type(exc).__name__, args.json)
    if args.json:
        print_json(report.as_dict())
    else:
        render(report)
    return report.exit_code
