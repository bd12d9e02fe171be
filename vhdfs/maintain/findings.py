"""What a check finds and how a repair mends it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vhdfs.errors import RefusedError, VhdfsError
from vhdfs.maintain.faults import FaultySource
from vhdfs.sources.base import Source

ERROR = "error"  # a problem: exit 4 unless repaired
WARNING = "warning"  # unusual but harmless to readers and writers
NOTE = "note"  # for information (unused space, empty blocks)

# Repairs run in this order, one rank at a time, each rank followed by a fresh scan: a
# file's trailing footer has to be right before its BAT can be judged, and so on.
RANK_TRUNCATE = 10
RANK_FOOTER = 20
RANK_HEADER = 30
RANK_BAT = 40
RANK_LOCATOR = 50
RANK_COMMIT = 60


class CannotCheck(VhdfsError):
    """The file cannot be checked at all (missing, unreadable, not a VHD)."""

    exit_code = 8


@dataclass
class Fix:
    rank: int
    action: str  # what the repair changes, as the report shows it
    apply: Callable[[FaultySource], None]  # writes, then syncs; leaves a readable file if cut short
    group: str = ""  # fixes of one group share `apply`, which runs once for all of them


@dataclass
class Finding:
    code: str  # stable name of the kind of problem (for --json and tests)
    severity: str
    message: str
    fix: Fix | None = None
    hint: str = ""  # what the user can do when no repair is automatic
    repaired: bool = False

    def as_dict(self) -> dict:
        item = {"code": self.code, "severity": self.severity, "message": self.message}
        if self.fix is not None:
            item["repair"] = self.fix.action
            item["repaired"] = self.repaired
        if self.hint:
            item["hint"] = self.hint
        return item


@dataclass
class FileScan:
    """Everything one scan of one file learned."""

    path: str
    file_size: int = 0
    findings: list[Finding] = field(default_factory=list)
    disk_type: int | None = None
    virtual_size: int = 0
    footer_offset: int | None = None
    data_end: int = 0  # end of the last metadata region or referenced block
    unique_id: bytes = b""
    commit_state: dict | None = None
    fatal: bool = False  # too damaged to look past the first fatal problem

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]


def scan_or_refuse(source: Source, scan: Callable[[Source], FileScan], action: str) -> FileScan:
    """`scan(source)` (a format's check), or RefusedError when the file cannot be checked at
    all: `action` (commit, set-parent) refuses it."""
    try:
        return scan(source)
    except CannotCheck as exc:
        raise RefusedError(f"{exc}; {action} refuses it") from None
