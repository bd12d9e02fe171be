"""Verify profiles: which guest checks run for an image, and what a problem each finds becomes.

Packaged as TOML in vhdfs/data/profiles/ (one file per profile); `--profile-file FILE` adds a
profile (a `[profile]` table and its `[checks]`) or agent profiles (`[[agent]]` tables, see
agents.py), or both. The format is described in azure-windows-generalized.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vhdfs.errors import UsageError

SEVERITIES = ("fail", "warn", "info", "off")
IMAGE_STATES = ("generalized", "specialized", "any")
OS_NAMES = ("windows", "linux")
WINDOWS_CHECKS = ("hives", "image-state", "clean-shutdown", "hibernation", "activation", "rdp",
                  "rdp-port", "dhcp", "san-policy", "time", "boot-loader")
LINUX_CHECKS = ("boot-entry", "console", "hyperv-drivers", "provisioning", "resource-disk",
                "swap", "fstab", "ssh-host-keys", "machine-id", "shell-history")
CHECKS = {"windows": WINDOWS_CHECKS, "linux": LINUX_CHECKS}
DEFAULT_PROFILES = {"windows": "azure-windows-generalized", "linux": "azure-linux-generalized"}


@dataclass
class VerifyProfile:
    id: str
    name: str
    os: str
    image: str  # the state the image must be in: generalized, specialized, any
    agents: list[str] | None  # agent profile ids; None: every agent profile
    checks: dict[str, str] = field(default_factory=dict)  # check id -> severity
    source: str = ""

    def severity(self, check: str) -> str:
        return self.checks.get(check, "off")

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "os": self.os, "image": self.image,
                "agents": self.agents, "checks": self.checks, "source": self.source}


def _profile_from(data: dict, source: str) -> VerifyProfile:
    table = data["profile"]
    where = f"{source}: [profile]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} is not a table")
    missing = [k for k in ("id", "name", "os") if k not in table]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(missing)}")
    if table["os"] not in OS_NAMES:
        raise UsageError(f"{where}: os = {table['os']!r}; use one of {', '.join(OS_NAMES)}")
    image = table.get("image", "any")
    if image not in IMAGE_STATES:
        raise UsageError(f"{where}: image = {image!r}; use one of {', '.join(IMAGE_STATES)}")
    agents = table.get("agents")
    if agents is not None and (not isinstance(agents, list)
                               or not all(isinstance(a, str) for a in agents)):
        raise UsageError(f"{where}: agents must be a list of agent profile ids")
    checks = data.get("checks", {})
    if not isinstance(checks, dict):
        raise UsageError(f"{source}: [checks] is not a table")
    known = CHECKS[table["os"]]
    for check, severity in checks.items():
        if check not in known:
            raise UsageError(f"{source}: [checks] {check}: no such {table['os']} check (known: "
                             f"{', '.join(known)})")
        if severity not in SEVERITIES:
            raise UsageError(f"{source}: [checks] {check} = {severity!r}; use one of "
                             f"{', '.join(SEVERITIES)}")
    return VerifyProfile(str(table["id"]), str(table["name"]), table["os"], image,
                         list(agents) if agents is not None else None, dict(checks), source)


def _parse(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None


def packaged_profiles() -> dict[str, VerifyProfile]:
    folder = resources.files("vhdfs").joinpath("data/profiles")
    out = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".toml"):
            source = f"vhdfs/data/profiles/{item.name}"
            profile = _profile_from(_parse(item.read_text(encoding="utf-8"), source), source)
            out[profile.id] = profile
    return out


@dataclass
class ProfileFiles:
    """What the --profile-file files hold: verify profiles, and the files with [[agent]]s."""

    profiles: dict[str, VerifyProfile] = field(default_factory=dict)
    agent_files: list[str] = field(default_factory=list)


def read_profile_files(names: list[str]) -> ProfileFiles:
    out = ProfileFiles()
    for name in names:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--profile-file {name}: {exc.strerror or exc}") from None
        data = _parse(text, name)
        if "profile" not in data and "agent" not in data:
            raise UsageError(f"{name}: defines neither a [profile] table nor [[agent]] tables "
                             "(see vhdfs/data/profiles/*.toml and vhdfs/data/agents.toml)")
        if "profile" in data:
            profile = _profile_from(data, name)
            out.profiles[profile.id] = profile
        if "agent" in data:
            out.agent_files.append(name)
    return out
