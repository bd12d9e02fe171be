"""A Linux disk's boot loader configuration: its entries, and which one boots by default.

GRUB 2 (`grub.cfg`, written by grub-mkconfig): `menuentry` and `submenu` blocks, `set default=`
(an index, a `N>M` path into a submenu, a title or an id), `${saved_entry}` / `next_entry` from
the `grubenv` file beside it, and, on Red Hat-style systems, `blscfg`: the entries are then Boot
Loader Specification files (`/boot/loader/entries/*.conf`, with `linux`, `initrd` and `options`
lines; `$kernelopts` comes from grubenv). systemd-boot reads the same entry files, with its
default in `loader/loader.conf`.

This is a reading of the configuration files, not a GRUB interpreter: it follows what
grub-mkconfig, the distributions' BLS tooling and bootctl write.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field

from vhdfs.guest.files import read_text
from vhdfs.guest.paths import glob, resolve
from vhdfs.guest.volumes import DiskVolumes, Volume

CONFIG_LIMIT = 4 * 1024 * 1024
# Where grub.cfg is found, most specific first: on the root or /boot file system, then on the
# EFI system partition (Red Hat 7/8 kept the whole configuration there).
GRUB_CONFIGS = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg", "grub/grub.cfg", "grub2/grub.cfg",
                "EFI/*/grub.cfg")
BLS_DIRS = ("boot/loader/entries", "loader/entries")
LINUX_COMMANDS = ("linux", "linuxefi", "linux16")
INITRD_COMMANDS = ("initrd", "initrdefi", "initrd16")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class BootEntry:
    title: str
    entry_id: str = ""
    kernel: str | None = None  # as the configuration names it ("/boot/vmlinuz-6.1.0-18-amd64")
    initrds: list[str] = field(default_factory=list)
    cmdline: str = ""
    volume: Volume | None = None  # the file system grub reads kernel and initrd from
    source: str = ""  # where the entry was read
    bls: bool = False  # a Boot Loader Specification entry: paths are relative to /boot

    def to_json(self) -> dict:
        return {"title": self.title, "id": self.entry_id or None, "kernel": self.kernel,
                "initrds": self.initrds, "cmdline": self.cmdline,
                "volume": self.volume.number if self.volume else None, "source": self.source}


@dataclass
class BootConfig:
    loader: str  # "GRUB 2" or "systemd-boot"
    path: str  # the configuration file
    volume: Volume
    entries: list[BootEntry] = field(default_factory=list)
    default: BootEntry | None = None
    default_how: str = ""
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.path} on volume {self.volume.number}"

    def to_json(self) -> dict:
        return {"loader": self.loader, "path": self.path, "volume": self.volume.number,
                "entries": [e.to_json() for e in self.entries],
                "default": self.default.to_json() if self.default else None,
                "default_how": self.default_how, "problems": self.problems}


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: grub would refuse it too; read it plainly
        return line.split()


def _expand(text: str, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def _env_file(volume: Volume, directory: str) -> dict[str, str]:
    """grubenv: `name=value` lines in a 1 KiB block padded with '#'."""
    found = resolve(volume, f"{directory}/grubenv")
    if found is None or found.is_dir:
        return {}
    out = {}
    for line in read_text(found, 64 * 1024).splitlines():
        if "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def _volume_by_uuid(disk: DiskVolumes, uuid: str) -> Volume | None:
    return next((v for v in disk.volumes if v.uuid and v.uuid.lower() == uuid.lower()), None)


def _search_target(words: list[str], disk: DiskVolumes) -> Volume | None:
    """`search --fs-uuid --set=root UUID` (and search.fs_uuid UUID root): the volume it sets."""
    if not words:
        return None
    if words[0] == "search.fs_uuid" and len(words) >= 2:
        return _volume_by_uuid(disk, words[1])
    if words[0] != "search":
        return None
    sets_root = any(w in ("--set=root", "--set") or w.startswith("--set=root") for w in words)
    by_uuid = any(w in ("--fs-uuid", "-u") for w in words)
    if sets_root and by_uuid:
        uuid = next((w for w in reversed(words[1:]) if not w.startswith("-") and w != "root"),
                    None)
        return _volume_by_uuid(disk, uuid) if uuid else None
    return None


@dataclass
class _Menu:
    title: str
    entry_id: str = ""
    items: list = field(default_factory=list)  # BootEntry | _Menu


def _title_and_id(words: list[str]) -> tuple[str, str]:
    title = words[1] if len(words) > 1 else ""
    entry_id = ""
    for index, word in enumerate(words):
        if word in ("--id", "$menuentry_id_option") and index + 1 < len(words):
            entry_id = words[index + 1]
        elif word.startswith("--id="):
            entry_id = word.split("=", 1)[1]
    return title, entry_id


def _parse_grub(text: str, disk: DiskVolumes, volume: Volume, path: str,
                env: dict[str, str]) -> tuple[_Menu, dict[str, str], list[str], bool]:
    """(top menu, top-level variables, the values of `set default=`, uses blscfg)."""
    parser = _GrubParser(disk, volume, path, env)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = _words(line)
        if words:
            parser.line(line, words)
    return parser.top, parser.variables, parser.defaults, parser.uses_bls


class _GrubParser:
    """One grub.cfg, line by line: its menus and entries, and the top-level settings."""

    def __init__(self, disk: DiskVolumes, volume: Volume, path: str, env: dict[str, str]) -> None:
        self.disk, self.volume, self.path = disk, volume, path
        self.top = _Menu("")
        self.stack: list[_Menu | BootEntry] = [self.top]
        self.variables = dict(env)
        self.defaults: list[str] = []
        self.top_root = volume  # where entries look for their files, until they search
        self.uses_bls = False

    def line(self, line: str, words: list[str]) -> None:
        command = words[0]
        if command in ("menuentry", "submenu") and line.endswith("{"):
            self._open(command, words)
        elif command == "}" or line == "}":
            if len(self.stack) > 1:
                self.stack.pop()
        elif isinstance(self.stack[-1], BootEntry):
            self._entry_line(self.stack[-1], command, words)
        else:
            self._menu_line(command, words)

    def _open(self, command: str, words: list[str]) -> None:
        title, entry_id = _title_and_id([w for w in words if w != "{"])
        if command == "submenu":
            item: _Menu | BootEntry = _Menu(title, entry_id)
        else:
            item = BootEntry(title, entry_id, volume=self.top_root, source=f"{self.path} on "
                             f"volume {self.volume.number}")
        current = self.stack[-1]
        parent = current if isinstance(current, _Menu) else self.top
        parent.items.append(item)
        self.stack.append(item)

    def _entry_line(self, entry: BootEntry, command: str, words: list[str]) -> None:
        target = _search_target(words, self.disk)
        if target is not None:
            entry.volume = target
        elif command in LINUX_COMMANDS and len(words) > 1:
            entry.kernel = _expand(words[1], self.variables)
            entry.cmdline = _expand(" ".join(words[2:]), self.variables)
        elif command in INITRD_COMMANDS:
            entry.initrds = [_expand(w, self.variables) for w in words[1:]]

    def _menu_line(self, command: str, words: list[str]) -> None:
        at_top = self.stack[-1] is self.top
        target = _search_target(words, self.disk)
        if target is not None and at_top:
            self.top_root = target
        if command == "set" and len(words) > 1 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            if name == "default":
                self.defaults.append(value)
            elif at_top and "$" not in value:
                self.variables.setdefault(name, value)
        elif command == "blscfg":
            self.uses_bls = True


def _flatten(menu: _Menu) -> list[BootEntry]:
    out: list[BootEntry] = []
    for item in menu.items:
        out.extend(_flatten(item) if isinstance(item, _Menu) else [item])
    return out


def _pick(menu: _Menu, spec: str) -> BootEntry | None:
    """The entry `set default=` names: "0", "1>2", a title, an id, or "Title>Title"."""
    parts = spec.split(">")
    node: _Menu | BootEntry = menu
    for part in parts:
        if not isinstance(node, _Menu):
            return None
        if part.isdigit():
            index = int(part)
            if index >= len(node.items):
                return None
            node = node.items[index]
        else:
            node = next((i for i in node.items if part in (i.title, i.entry_id)), None) \
                or next((e for e in _flatten(node) if part in (e.title, e.entry_id)), None)
            if node is None:
                return None
    if isinstance(node, _Menu):  # a submenu named alone boots its first entry
        entries = _flatten(node)
        return entries[0] if entries else None
    return node


def _version_key(text: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text) if p]


def _bls_entries(disk: DiskVolumes, variables: dict[str, str]) -> list[BootEntry]:
    entries = []
    for volume in disk.with_fs():
        for directory in BLS_DIRS:
            for found in glob(volume, f"{directory}/*.conf"):
                entry = BootEntry(found.parts[-1].removesuffix(".conf"),
                                  found.parts[-1].removesuffix(".conf"), volume=volume,
                                  source=f"{found.path} on volume {volume.number}", bls=True)
                options = []
                for line in read_text(found, 64 * 1024).splitlines():
                    key, _, value = line.strip().partition(" ")
                    value = _expand(value.strip(), variables)
                    if key == "title":
                        entry.title = value
                    elif key == "linux":
                        entry.kernel = value
                    elif key == "initrd":
                        entry.initrds += value.split()
                    elif key == "options":
                        options.append(value)
                entry.cmdline = " ".join(options)
                entries.append(entry)
    # grub's blscfg and systemd-boot list the newest version first
    entries.sort(key=lambda e: _version_key(e.entry_id), reverse=True)
    return entries


def _grub_config(disk: DiskVolumes, volume: Volume, found) -> BootConfig | None:
    text = read_text(found, CONFIG_LIMIT)
    if "menuentry" not in text and "blscfg" not in text:
        return None  # a stub that loads the real configuration (configfile)
    directory = "/".join(found.parts[:-1])
    env = _env_file(volume, directory)
    config = BootConfig("GRUB 2", found.path, volume)
    top, variables, defaults, uses_bls = _parse_grub(text, disk, volume, found.path, env)
    config.entries = _flatten(top)
    bls = _bls_entries(disk, variables) if uses_bls else []
    config.entries = bls + config.entries
    spec = "0"
    how = "the first entry (no set default=)"
    plain = [d for d in defaults if "$" not in d]
    if any("saved_entry" in d for d in defaults) or (uses_bls and env.get("saved_entry")):
        spec = env.get("saved_entry") or "0"
        how = f"saved_entry={spec!r} in grubenv" if env.get("saved_entry") else \
            "the first entry (saved_entry is not set in grubenv)"
    elif plain:
        spec = plain[-1]
        how = f"set default={spec!r} in {found.path}"
    if env.get("next_entry"):
        spec = env["next_entry"]
        how = f"next_entry={spec!r} in grubenv (boots once, then the default again)"
    menu = _Menu("", items=(bls if uses_bls else []) + list(top.items))
    config.default = _pick(menu, spec)
    config.default_how = how
    if config.default is None:
        config.problems.append(f"the default entry ({how}) names no entry of {found.path} "
                               f"({len(config.entries)} entries); grub falls back to the first")
        config.default = config.entries[0] if config.entries else None
    if not config.entries:
        config.problems.append(f"{found.path} on volume {volume.number} has no boot entries")
    return config


def _systemd_boot(disk: DiskVolumes) -> BootConfig | None:
    for volume in disk.with_fs():
        found = resolve(volume, "loader/loader.conf")
        if found is None:
            continue
        config = BootConfig("systemd-boot", found.path, volume)
        config.entries = _bls_entries(disk, {})
        pattern = ""
        for line in read_text(found, 64 * 1024).splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "default":
                pattern = value.strip().removesuffix(".conf")
        if pattern:
            config.default = next((e for e in config.entries
                                   if fnmatch.fnmatchcase(e.entry_id, pattern)), None)
            config.default_how = f"default {pattern} in {found.path}"
        elif config.entries:
            config.default = config.entries[0]
            config.default_how = "the newest entry (no default in loader.conf)"
        if config.default is None:
            config.problems.append(f"{found.path} on volume {volume.number}: no entry is the "
                                   "default")
        return config
    return None


def read_boot_config(disk: DiskVolumes, prefer: Volume | None = None) -> BootConfig | None:
    """The configuration the boot loader reads: grub.cfg on `prefer` (the root file system)
    first, then on the other volumes; systemd-boot's loader.conf when there is no grub.cfg."""
    volumes = disk.with_fs()
    if prefer is not None and prefer in volumes:
        volumes = [prefer] + [v for v in volumes if v is not prefer]
    for pattern in GRUB_CONFIGS:
        for volume in volumes:
            for found in glob(volume, pattern):
                config = _grub_config(disk, volume, found)
                if config is not None:
                    return config
    return _systemd_boot(disk)


def locate(entry: BootEntry, path: str):
    """The file a boot entry names, on the volume grub reads it from (None when absent)."""
    volume = entry.volume
    if volume is None or volume.fs is None:
        return None
    found = resolve(volume, path)
    if found is None and entry.bls:  # BLS paths are relative to /boot, which may be the root's /boot
        found = resolve(volume, "boot/" + path.lstrip("/"))
    return found if found is not None and not found.is_dir else None
