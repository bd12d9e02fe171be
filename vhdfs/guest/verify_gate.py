"""How a guest check's result becomes a finding: the profile says what a problem is worth.

A check calls `ok` when what it looked at is as Azure wants it, `problem` (with the fix) when it
is not, `unknown` when it could not tell (a warning at most: vhdfs does not fail an image over
what it cannot read) and `info` for what is only reported.
"""

from __future__ import annotations

from typing import Any, Protocol

from vhdfs.guest.verify_profiles import VerifyProfile

PASS, FAIL, WARN, INFO = "pass", "fail", "warn", "info"
STATUS_OF = {"fail": FAIL, "warn": WARN, "info": INFO}


class Findings(Protocol):
    def add(self, check: str, status: str, message: str, *, fix: str = "",
            **details: Any) -> None: ...


class Gate:
    def __init__(self, report: Findings, profile: VerifyProfile) -> None:
        self.report = report
        self.profile = profile

    def runs(self, check: str) -> bool:
        return self.profile.severity(check) != "off"

    def ok(self, check: str, message: str, **details: Any) -> None:
        if self.runs(check):
            self.report.add(check, PASS, message, **details)

    def problem(self, check: str, message: str, fix: str, **details: Any) -> None:
        severity = self.profile.severity(check)
        if severity != "off":
            self.report.add(check, STATUS_OF[severity], message, fix=fix, **details)

    def unknown(self, check: str, message: str, fix: str = "", **details: Any) -> None:
        severity = self.profile.severity(check)
        if severity != "off":
            self.report.add(check, INFO if severity == "info" else WARN, message, fix=fix,
                            **details)

    def info(self, check: str, message: str, **details: Any) -> None:
        if self.runs(check):
            self.report.add(check, INFO, message, **details)
