"""Who holds an image file: the records holders leave, /proc, and the refusal that names them.

vhdfs.sources.locks decides (the kernel's locks do); this module only says who. Each writer
and each mount writes a small record (pid, start time, command line without secrets, mount
point) into a per-user runtime folder; a refusal reads the records of the file (dead
processes' records are skipped and removed), else looks in /proc for a process with a lock
on it (qemu, a short vhdfs reader, another user's process when /proc shows it).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from vhdfs.quoting import printable
from vhdfs.secrets import scrub  # the one scrubber


@dataclass
class Holder:
    pid: int | None
    command: str  # without secrets; "" when not known
    mode: str  # "exclusive", "shared" or "" (not known)
    mountpoint: str | None = None
    from_record: bool = True


_START_TIMES: dict[int, str | None] = {}
_SWEPT: set[Path] = set()  # record folders cleared of dead processes' records


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (pid + start: no reuse mix-up)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def own_start() -> str | None:
    pid = os.getpid()
    if pid not in _START_TIMES:
        _START_TIMES[pid] = start_time(pid)
    return _START_TIMES[pid]


def record_dirs() -> list[Path]:
    """Where records may be, the one written to first: the user's runtime folder (from
    XDG_RUNTIME_DIR or /run/user/UID) when it is theirs, else a folder of theirs in /tmp."""
    uid = os.getuid()
    out = []
    for base in (os.environ.get("XDG_RUNTIME_DIR"), f"/run/user/{uid}"):
        if not base:
            continue
        try:
            info = os.stat(base)
        except OSError:
            continue
        if info.st_uid == uid and Path(base, "vhdfs-locks") not in out:
            out.append(Path(base, "vhdfs-locks"))
    out.append(Path(f"/tmp/vhdfs-locks-{uid}"))
    return out


def usable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return False
    # In /tmp anyone could have made it first: only a real folder of ours, closed to others.
    return info.st_uid == os.getuid() and (info.st_mode & 0o077) == 0 and \
        os.path.isdir(folder) and not os.path.islink(folder)


def record_name(key: tuple[int, int], pid: int) -> str:
    return f"{key[0]}-{key[1]}-{pid}.json"


def write_record(key: tuple[int, int], record: dict) -> bool:
    """Record that this process holds the file `key` (atomically replaced); False when no
    folder takes it (the lock holds all the same: only the message loses a name)."""
    pid = os.getpid()
    for folder in record_dirs():
        if not usable_dir(folder):
            continue
        _sweep(folder)
        target = folder / record_name(key, pid)
        tmp = folder / f".{target.name[:-5]}.tmp"
        try:
            tmp.write_text(json.dumps({"pid": pid, "start": own_start(), **record}))
            os.replace(tmp, target)
            return True
        except OSError:
            continue
    return False


def remove_record(key: tuple[int, int]) -> None:
    name = record_name(key, os.getpid())
    for folder in record_dirs():
        try:
            (folder / name).unlink()
        except OSError:
            pass


def _sweep(folder: Path) -> None:
    """Once per process and folder: drop the records of processes that are gone (killed
    ones leave theirs; their locks went with them)."""
    if folder in _SWEPT:
        return
    _SWEPT.add(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid_text = name.rsplit("-", 1)[-1].removesuffix(".json").removesuffix(".tmp")
        if pid_text.isdigit() and not os.path.exists(f"/proc/{pid_text}"):
            try:
                os.unlink(folder / name)
            except OSError:
                pass


def records(key: tuple[int, int]) -> list[Holder]:
    """The live holders the records name (not this process); dead ones' records go."""
    out: list[Holder] = []
    seen: set[int] = set()
    for folder in record_dirs():
        try:
            paths = sorted(folder.glob(f"{key[0]}-{key[1]}-*.json"))
        except OSError:
            continue
        for path in paths:
            try:
                data = json.loads(path.read_text())
                pid = int(data["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == os.getpid() or pid in seen:
                continue
            if start_time(pid) is None or start_time(pid) != data.get("start"):
                try:
                    path.unlink()  # its process is gone: the lock went with it
                except OSError:
                    pass
                continue
            seen.add(pid)
            out.append(Holder(pid, str(data.get("command") or ""), str(data.get("mode") or ""),
                              data.get("mountpoint") or None))
    return out


def cmdline(pid: int) -> str:
    """A process's command line, as a user would type it (`vhdfs ...`), without secrets."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            parts = handle.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return ""
    words = [os.fsdecode(p) for p in parts if p]
    if words:
        words[0] = os.path.basename(words[0])
    if len(words) >= 3 and words[0].startswith("python") and words[1:3] == ["-m", "vhdfs"]:
        words = ["vhdfs", *words[3:]]
    elif len(words) >= 2 and words[0].startswith("python") and \
            os.path.basename(words[1]) == "vhdfs":
        words = ["vhdfs", *words[2:]]
    return safe_text(shlex.join(words))


def safe_text(text: str, limit: int = 160) -> str:
    """Text that may name blob URLs, fit to print or store: no secrets, no control
    characters, not too long."""
    text = printable(scrub(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _mount_devices() -> dict[str, int]:
    """mnt_id -> st_dev of every mount this process sees (to compare /proc fdinfo)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                fields = line.split()
                major, minor = fields[2].split(":")
                out[fields[0]] = os.makedev(int(major), int(minor))
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_holders(key: tuple[int, int]) -> list[Holder]:
    """Processes with a lock on the file, from /proc (fdinfo names inode, mount and locks,
    and reading it never touches the file itself, which might sit on a hung mount)."""
    devices = _mount_devices()
    me = os.getpid()
    out: list[Holder] = []
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return out
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
                    text = handle.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if fields.get("ino", "").strip() != str(key[1]) or "lock" not in fields:
                continue
            if devices.get(fields.get("mnt_id", "").strip()) != key[0]:
                continue
            out.append(Holder(pid, cmdline(pid), "", None, from_record=False))
            break
    return out


def holders(key: tuple[int, int], writer: bool | None = None) -> list[Holder]:
    """Who holds the file: the writers first when `writer`, the readers first when not."""
    found = records(key)
    if writer is not None:
        wanted = [h for h in found if (h.mode == "exclusive") == writer]
        found = wanted + [h for h in found if h not in wanted]
    return found or proc_holders(key)


def describe(holder: Holder) -> str:
    where = f", mounted at {holder.mountpoint}" if holder.mountpoint else ""
    what = holder.command or "a process"
    return f"{what} (pid {holder.pid}{where})"


def fix(holder: Holder | None, name: str) -> str:
    if holder is None:
        return f"find it with: fuser -v {name}"
    if holder.mountpoint:
        return f"unmount it first: vhdfs umount {holder.mountpoint}"
    if holder.command.startswith("vhdfs commit"):
        return "wait for that commit to finish"
    return "wait for it to finish"


def busy_message(name: str, key: tuple[int, int], *, to_write: bool, writer: bool,
                 qemu: bool) -> str:
    """One line: the file, who holds it and how, what this command needs, the fix.
    `to_write`: this command wants it alone; `writer`: the holder writes; `qemu`: the
    conflict is on one of qemu's bytes."""
    found = holders(key, writer)
    first = found[0] if found else None
    who = describe(first) if first else "another process"
    if len(found) > 1:
        who += f" and {len(found) - 1} more"
    if writer:
        doing = f"{who} is writing it" + (" (qemu's write lock)" if qemu else "")
    else:
        doing = f"{who} is reading it" + (" (qemu's lock: no writer allowed)" if qemu else "")
    need = "; writing needs it alone" if to_write and not writer else ""
    text = f"{name}: in use: {doing}{need}; {fix(first, name)}"
    if not to_write:
        text += " (or read it anyway with --force-share: what is read may then be inconsistent)"
    return text


def writer_named(key: tuple[int, int]) -> str:
    found = holders(key, True)
    return describe(found[0]) if found else "another process"
