"""Azure agents on guest volumes: profiles (packaged TOML data) and what an image has installed.

A profile names the agent's files (globs) and where its version is: the PE version resource of
a Windows executable (read with pefile), or a line of an installed text file (the Linux agent's
azurelinuxagent/common/version.py or its egg-info PKG-INFO).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pefile

from vhdfs.errors import UsageError
from vhdfs.guest.errors import GuestError
from vhdfs.guest.files import read_all, read_text
from vhdfs.guest.paths import Found, glob
from vhdfs.guest.volumes import DiskVolumes, Volume

PE_LIMIT = 256 * 1024 * 1024
TEXT_LIMIT = 4 * 1024 * 1024
OS_NAMES = ("windows", "linux")


@dataclass
class AgentProfile:
    id: str
    name: str
    os: str
    files: list[str]
    version: list[dict] = field(default_factory=list)
    note: str = ""
    source: str = ""  # the TOML file it came from


@dataclass
class AgentFound:
    profile: AgentProfile
    volume: Volume
    path: str
    version: str | None = None
    version_from: str = ""  # "PE version resource of /..." or "AGENT_VERSION in /..."
    version_error: str = ""

    def describe(self) -> str:
        version = f"version {self.version}" if self.version else "an unknown version"
        return f"{self.profile.name} {version} on volume {self.volume.number}"

    def to_json(self) -> dict:
        return {"profile": self.profile.id, "name": self.profile.name, "os": self.profile.os,
                "volume": self.volume.number, "path": self.path, "version": self.version,
                "version_from": self.version_from, "version_error": self.version_error or None}


def _profiles_from(text: str, source: str) -> list[AgentProfile]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    out = []
    for index, item in enumerate(data.get("agent", []), start=1):
        where = f"{source}: [[agent]] number {index}"
        if not isinstance(item, dict):
            raise UsageError(f"{where} is not a table")
        missing = [k for k in ("id", "name", "os", "files") if k not in item]
        if missing:
            raise UsageError(f"{where} lacks {', '.join(missing)}")
        if item["os"] not in OS_NAMES:
            raise UsageError(f"{where}: os = {item['os']!r}; use one of {', '.join(OS_NAMES)}")
        if not isinstance(item["files"], list) or not all(isinstance(f, str) for f in item["files"]):
            raise UsageError(f"{where}: files must be a list of path globs")
        version = item.get("version", [])
        for rule in version:
            if not isinstance(rule, dict) or not ("pe" in rule or ("text" in rule and "regex" in rule)):
                raise UsageError(f"{where}: each version rule is {{ pe = GLOB }} or "
                                 "{ text = GLOB, regex = RE }")
            if "regex" in rule:
                try:
                    re.compile(rule["regex"])
                except re.error as exc:
                    raise UsageError(f"{where}: regex {rule['regex']!r}: {exc}") from None
        out.append(AgentProfile(str(item["id"]), str(item["name"]), item["os"],
                                list(item["files"]), list(version), str(item.get("note", "")),
                                source))
    if not out:
        raise UsageError(f"{source}: defines no [[agent]] profiles")
    return out


def load_profiles(extra_files: list[str] | None = None) -> dict[str, AgentProfile]:
    """The packaged profiles, then those of each --profile-file (same id replaces)."""
    packaged = resources.files("vhdfs").joinpath("data/agents.toml").read_text(encoding="utf-8")
    profiles = {p.id: p for p in _profiles_from(packaged, "vhdfs/data/agents.toml")}
    for name in extra_files or []:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--profile-file {name}: {exc.strerror or exc}") from None
        profiles.update({p.id: p for p in _profiles_from(text, name)})
    return profiles


def select_profiles(profiles: dict[str, AgentProfile], names: list[str] | None
                    ) -> list[AgentProfile]:
    if not names:
        return list(profiles.values())
    unknown = [n for n in names if n not in profiles]
    if unknown:
        raise UsageError(f"--profile {', '.join(unknown)}: no such agent profile (known: "
                         f"{', '.join(sorted(profiles))})")
    return [profiles[n] for n in names]


def pe_version(data: bytes) -> str:
    """The file version in a PE file's version resource (VS_FIXEDFILEINFO, else StringFileInfo)."""
    try:
        pe = pefile.PE(data=data, fast_load=True)
        pe.parse_data_directories(directories=[
            pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_RESOURCE"]])
    except pefile.PEFormatError as exc:
        raise GuestError(f"not a PE file ({exc})") from None
    # pefile sets these attributes only when the file has the resource (the PE object has
    # no such attribute otherwise).
    fixed = getattr(pe, "VS_FIXEDFILEINFO", None)
    if fixed:
        info = fixed[0]
        return (f"{info.FileVersionMS >> 16}.{info.FileVersionMS & 0xFFFF}."
                f"{info.FileVersionLS >> 16}.{info.FileVersionLS & 0xFFFF}")
    for file_info in getattr(pe, "FileInfo", None) or []:  # pefile: only when present
        for item in file_info:
            for table in getattr(item, "StringTable", []):  # VarFileInfo entries have none
                value = table.entries.get(b"FileVersion")
                if value:
                    return value.decode("utf-8", errors="replace").strip()
    raise GuestError("has no version resource")


def _version_key(version: str | None) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.\-+]", version or "0"))


def _find_version(volume: Volume, profile: AgentProfile, found: AgentFound) -> None:
    """The version by the first rule that yields one (the newest, when several copies match)."""
    errors = []
    for rule in profile.version:
        pattern = rule.get("pe") or rule.get("text")
        versions: list[tuple[str, str]] = []
        for match in glob(volume, pattern):
            try:
                if "pe" in rule:
                    versions.append((pe_version(read_all(match, PE_LIMIT)),
                                     f"PE version resource of {match.path}"))
                    continue
                hit = re.search(rule["regex"], read_text(match, TEXT_LIMIT), re.MULTILINE)
                if hit:
                    versions.append((hit.group(1) if hit.groups() else hit.group(0), match.path))
                else:
                    errors.append(f"{match.path}: no match for {rule['regex']}")
            except GuestError as exc:
                errors.append(f"{match.path}: {exc}")
        if versions:
            found.version, found.version_from = max(versions, key=lambda v: _version_key(v[0]))
            return
    found.version_error = "; ".join(errors) or "no version file found"


def find_agents(disk: DiskVolumes, profiles: list[AgentProfile]) -> list[AgentFound]:
    """Every profile's agent on every volume, the newest version first per profile and volume."""
    results: list[AgentFound] = []
    for profile in profiles:
        for volume in disk.with_fs():
            hits: list[Found] = []
            for pattern in profile.files:
                hits += glob(volume, pattern)
            if not hits:
                continue
            found = AgentFound(profile, volume, hits[0].path)
            _find_version(volume, profile, found)
            results.append(found)
    results.sort(key=lambda f: (f.profile.id, f.volume.number))
    return results


def newest(found: list[AgentFound]) -> AgentFound | None:
    return max(found, key=lambda f: _version_key(f.version), default=None)
