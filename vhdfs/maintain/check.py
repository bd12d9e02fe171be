"""vhdfs check: the structure of an image and every link of its chain; --repair mends the
named image (its parents are reported with the command that mends them).

Exit codes, as fsck: 0 clean, 1 problems found and all repaired, 4 problems left,
8 the image could not be checked at all; and 9 (vhdfs's "in use"): another process holds a
layer (a writer; for --repair, any user), so it was not checked.

The layers are held (vhdfs.sources.locks) from the first read to the end: shared, so no
writer changes them under the check; the image exclusively with --repair. With
--force-share a layer a writer holds is read anyway, and its report names the writer:
what was read may be a state the writer is half way through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vhdfs.azure.location import looks_remote
from vhdfs.errors import ChainError, FormatError, ImageBusy, VhdfsError
from vhdfs.maintain.commit import unfinished_commit_fix
from vhdfs.maintain.commit_vhdx import unfinished_commit_fix as unfinished_commit_fix_vhdx
from vhdfs.maintain.faults import Faults, FaultySource
from vhdfs.maintain.files import read_only_reason
from vhdfs.maintain.findings import ERROR, CannotCheck, FileScan, Finding
from vhdfs.maintain.scan import scan_file
from vhdfs.maintain.scan_vhdx import scan_any
from vhdfs.resolve import OpenOptions, find_parent, open_layer, open_source
from vhdfs.sources import locks
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile
from vhdfs.sources.locks import Mode
from vhdfs.vhd.footer import DiskType
from vhdfs.vhd.layer import Layer

EXIT_CLEAN = 0
EXIT_REPAIRED = 1
EXIT_PROBLEMS = 4
EXIT_UNCHECKED = 8
EXIT_IN_USE = ImageBusy.exit_code
MAX_REPAIR_PASSES = 12


@dataclass
class LayerReport:
    path: str
    role: str  # "image" (the one named) or "parent"
    findings: list[Finding] = field(default_factory=list)
    found_by: str = ""  # how the parent was found
    unchecked: str = ""  # why the file could not be checked
    disk_type: str = ""
    in_use: str = ""  # not checked: the refusal that names who holds it
    written_by: str = ""  # read anyway (--force-share) while this process writes it

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR and not f.repaired]

    @property
    def repaired(self) -> list[Finding]:
        return [f for f in self.findings if f.repaired]

    def as_dict(self) -> dict:
        item = {"path": self.path, "role": self.role, "disk_type": self.disk_type or None,
                "findings": [f.as_dict() for f in self.findings]}
        if self.found_by:
            item["found_by"] = self.found_by
        if self.unchecked:
            item["unchecked"] = self.unchecked
        if self.in_use:
            item["in_use"] = self.in_use
        if self.written_by:
            item["written_by"] = self.written_by
        return item


@dataclass
class CheckReport:
    image: str
    repair: bool
    dry_run: bool
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(layer.in_use for layer in self.layers):
            return EXIT_IN_USE
        if not self.layers or self.layers[0].unchecked:
            return EXIT_UNCHECKED
        if any(layer.problems or layer.unchecked for layer in self.layers):
            return EXIT_PROBLEMS
        if any(layer.repaired for layer in self.layers):
            return EXIT_REPAIRED
        return EXIT_CLEAN

    @property
    def status(self) -> str:
        return {EXIT_CLEAN: "clean", EXIT_REPAIRED: "repaired", EXIT_PROBLEMS: "problems",
                EXIT_UNCHECKED: "unchecked", EXIT_IN_USE: "in-use"}[self.exit_code]


    def as_dict(self) -> dict:
        return {"image": self.image, "status": self.status, "exit_code": self.exit_code,
                "repair": self.repair, "dry_run": self.dry_run,
                "layers": [layer.as_dict() for layer in self.layers]}


def _open(path: str, options: OpenOptions) -> Source:
    try:  # a local file, or a page blob for a blob spec
        return open_source(path, force_share=options.force_share)
    except VhdfsError as exc:
        raise CannotCheck(str(exc)) from None


def _scan(path: str, options: OpenOptions) -> FileScan:
    with _open(path, options) as source:
        # A remote image is checked without reading every block's bitmap (one request each).
        scan = scan_any(source, lambda: scan_file(source, size_rule=options.size_rule,
                                                  bitmaps=not source.remote),
                        bitmaps=not source.remote)
    if scan.commit_state is not None:  # the repair of an unfinished commit is commit's own
        if scan.commit_state.get("image_format") == "vhdx":
            fix = unfinished_commit_fix_vhdx(scan.path, scan.commit_state, list(options.search))
        else:
            fix = unfinished_commit_fix(scan.path, scan.commit_state, scan.unique_id,
                                        list(options.search))
        for finding in scan.findings:
            if finding.code == "mid-commit" and fix is not None:
                finding.fix, finding.hint = fix, ""
    return scan


def _opens(path: str, options: OpenOptions) -> str:
    """Layer's own verdict, a safety net behind the scan: "" when the file opens."""
    with _open(path, options) as source:  # closed (and unlocked) when Layer refuses it too
        try:
            open_layer(source, options)
            return ""
        except FormatError as exc:
            return str(exc)


def _key(finding: Finding) -> tuple[str, str]:
    return finding.code, finding.message


def check_file(path: str, options: OpenOptions, role: str = "image", *, repair: bool = False,
               dry_run: bool = False, faults: Faults | None = None,
               spec: str | None = None) -> LayerReport:
    """Check one file, shown as `path`, opened from `spec` (a blob URL with its SAS)."""
    report = LayerReport(path, role)
    try:
        scan = _scan(spec or path, options)
    except CannotCheck as exc:
        report.unchecked = str(exc)
        return report
    done: list[Finding] = []
    if repair and not dry_run and any(f.fix for f in scan.findings):
        with _open(path, options) as probe:
            local = isinstance(probe, LocalFile)
        reason = read_only_reason(Path(path)) if local else "repairs are made to local files only"
        if reason is not None:
            report.findings.append(Finding("read-only", ERROR, f"{path}: cannot repair: {reason}"))
        else:
            scan = _repair(path, options, scan, done, faults or Faults.from_env())
    report.findings = report.findings + done + scan.findings
    if scan.disk_type is not None:
        report.disk_type = DiskType(scan.disk_type).name.lower()
    if not scan.errors and not scan.fatal:
        verdict = _opens(spec or path, options)
        if verdict:
            report.findings.append(Finding("open-failed", ERROR, verdict))
    return report


def _repair(path: str, options: OpenOptions, scan: FileScan, done: list[Finding],
            faults: Faults) -> FileScan:
    applied: set[tuple[str, str]] = set()
    for _ in range(MAX_REPAIR_PASSES):
        groups: set[str] = set()
        fixes = [f for f in scan.findings if f.fix and _key(f) not in applied]
        if not fixes:
            break
        rank = min(f.fix.rank for f in fixes)
        with FaultySource(LocalFile(path, writable=True), faults) as source:
            for finding in fixes:
                if finding.fix.rank != rank:
                    continue
                applied.add(_key(finding))
                try:
                    if not finding.fix.group or finding.fix.group not in groups:
                        finding.fix.apply(source)
                        groups.add(finding.fix.group)
                except VhdfsError as exc:
                    done.append(Finding("repair-failed", ERROR, f"{path}: could not "
                                        f"{finding.fix.action}: {exc}"))
                    continue
                finding.repaired = True
                done.append(finding)
        scan = _scan(path, options)
    return scan


def check_image(spec: str, options: OpenOptions | None = None, *, repair: bool = False,
                dry_run: bool = False, faults: Faults | None = None) -> CheckReport:
    """Check `spec` and the links of its chain; with `repair`, mend `spec` itself."""
    options = options or OpenOptions()
    report = CheckReport(spec, repair, dry_run)
    writes = repair and not dry_run
    mode = Mode.EXCLUSIVE if writes else locks.mode_for(False, options.force_share)
    try:
        hold = locks.Hold(None, None) if looks_remote(spec) else locks.lock_path(spec, mode)
    except ImageBusy as exc:
        report.layers.append(LayerReport(spec, "image", in_use=str(exc)))
        return report
    with hold:
        _check_chain(spec, options, report, repair, dry_run, faults)
    return report


def _check_chain(spec: str, options: OpenOptions, report: CheckReport, repair: bool,
                 dry_run: bool, faults: Faults | None) -> None:
    first = check_file(spec, options, repair=repair, dry_run=dry_run, faults=faults)
    first.written_by = _writer(spec, options)
    report.layers.append(first)
    if first.unchecked or first.disk_type != "differencing":
        return
    try:
        source = _open(spec, options)
    except VhdfsError:
        return
    try:
        layer = open_layer(source, options)
    except VhdfsError:
        source.close()
        return  # the scan said why; the links are checked once it opens
    current = first
    seen = {layer.source.identity()}
    opened = [layer]  # every layer stays held until the whole chain is checked
    try:
        while layer.is_differencing:
            # Counted by layers, not by distinct files: a loop the resolver missed still ends.
            # The same limit as the resolver's: one more layer would exceed it.
            if len(report.layers) >= options.max_depth:
                current.findings.append(Finding("chain-depth", ERROR, f"{spec}: the chain is "
                                                f"deeper than {options.max_depth} layers (at "
                                                f"{layer.name}); a parent loop or a runaway chain"))
                break
            try:
                parent, link = find_parent(layer, options, seen)
            except ImageBusy as exc:
                report.layers.append(LayerReport(exc.path or "parent", "parent", in_use=str(exc)))
                break
            except ChainError as exc:
                current.findings.append(Finding(
                    "parent-link", ERROR, str(exc), hint=f"vhdfs set-parent {layer.name} PARENT "
                    "re-links it; --parent PATH or --search DIR point at it for one command"))
                break
            layer = parent
            opened.append(parent)
            seen.add(parent.source.identity())
            current = check_file(link.path, options, "parent", spec=_reopen_spec(parent))
            current.found_by = link.found_by
            current.written_by = _writer(link.path, options)
            report.layers.append(current)
    finally:
        for held in opened:
            held.source.close()


def _reopen_spec(layer: Layer) -> str | None:
    """How to open a remote parent again: its URL with the SAS it was found with (the
    child's own); shown only as its name, and every output is scrubbed anyway."""
    return layer.source.location.url_with_sas if layer.source.remote else None


def _writer(path: str, options: OpenOptions) -> str:
    """With --force-share: who writes `path` while it is checked ("" when nobody does)."""
    if not (options.force_share if options.force_share is not None
            else locks.force_share_default()) or looks_remote(path):
        return ""
    return locks.writer_of_path(path) or ""
