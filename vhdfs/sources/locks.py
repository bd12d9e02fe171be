"""Image locks: one writer, or any number of readers, per local image file, across processes.

Modelled on qemu's image locking (since 2.10), with open-file-description locks
(`F_OFD_SETLK`): they belong to an open file description, not to a process, so a crash or a
kill -9 releases them with the last descriptor and nothing stale is ever left; and they
survive a fork, so the mount daemon keeps what the command took before it forked.

Modes:
  EXCLUSIVE     a writer: nobody else may read or write the file (force-shared readers aside)
  SHARED        a reader: keeps writers out, shares the file with other readers
  FORCE_SHARED  a reader with --force-share: keeps nobody out and is kept out by nobody

Bytes locked (a lock past the end of a file is allowed and touches no data):
  OWN_BYTE      the arbiter between vhdfs processes: a write lock for EXCLUSIVE, a read lock
                for SHARED. One F_OFD_SETLK decides, so there is no check-then-lock race.
  100+p, 200+p  qemu's bytes (block/file-posix.c): 100+p "uses permission p", 200+p "does
                not share permission p", p = 0 consistent read, 1 write, 3 resize. They are
                held as shared locks and tested with F_OFD_GETLK, as qemu does, so qemu-img
                refuses an image vhdfs writes and vhdfs refuses an image qemu writes.

A process never conflicts with itself: one registry per process keeps one lock description
per file (st_dev, st_ino) with a count per mode, upgraded and downgraded in place. A writer's
lock needs a description open for writing; a reader's needs only read access.

Who holds a file, for the refusal's message: vhdfs.sources.holders (records and /proc).
"""

from __future__ import annotations

import atexit
import enum
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vhdfs.errors import ImageBusy
from vhdfs.sources import holders
from vhdfs.sources.holders import safe_text

log = logging.getLogger("vhdfs")

# The standard library's fcntl names these only where its build saw them (Linux >= 3.15
# headers); the kernel's values otherwise.
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padding
_FLOCK = struct.Struct("hhqqi4x")
OWN_BYTE = 0x76686466  # "vhdf": far from libvirt's byte 0 and qemu's 100-2xx
QEMU_PERM_BASE = 100
QEMU_UNSHARED_BASE = 200
_CONSISTENT_READ, _WRITE, _RESIZE = 0, 1, 3
_CONFLICT = (errno.EAGAIN, errno.EACCES)
# The file system does not do these locks (some network file systems, old kernels).
_UNSUPPORTED = (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
# Test hook, read here only: "MODE:NAME:FLAG" pauses the process once, right after it took
# MODE on a file named NAME: it writes FLAG.reached (its pid), then waits for FLAG.go.
ENV_PAUSE = "VHDFS_TEST_PAUSE"
PAUSE_LIMIT = 300.0


class Mode(enum.IntEnum):
    FORCE_SHARED = 0
    SHARED = 1
    EXCLUSIVE = 2

    @property
    def word(self) -> str:
        return ("force-shared", "shared", "exclusive")[self]


_RANK = {fcntl.F_UNLCK: 0, fcntl.F_RDLCK: 1, fcntl.F_WRLCK: 2}


@dataclass(frozen=True)
class _Plan:
    own: int  # F_UNLCK, F_RDLCK or F_WRLCK on OWN_BYTE
    held: frozenset[int]  # qemu bytes held (shared locks)
    tested: tuple[int, ...]  # qemu bytes no other description may hold


def _plan(mode: Mode | None) -> _Plan:
    if mode is None:
        return _Plan(fcntl.F_UNLCK, frozenset(), ())
    uses = {_CONSISTENT_READ} | ({_WRITE, _RESIZE} if mode is Mode.EXCLUSIVE else set())
    unshared = set() if mode is Mode.FORCE_SHARED else {_WRITE, _RESIZE}
    own = (fcntl.F_UNLCK, fcntl.F_RDLCK, fcntl.F_WRLCK)[mode]
    held = frozenset({QEMU_PERM_BASE + p for p in uses} | {QEMU_UNSHARED_BASE + p for p in unshared})
    tested = tuple(sorted({QEMU_UNSHARED_BASE + p for p in uses}
                          | {QEMU_PERM_BASE + p for p in unshared}))
    return _Plan(own, held, tested)


def _setlk(fd: int, kind: int, start: int) -> None:
    fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0))


def _blocker(fd: int, kind: int, start: int) -> int | None:
    """The type of a lock another description holds that keeps `kind` from `start`, or None."""
    got = _FLOCK.unpack(fcntl.fcntl(fd, F_OFD_GETLK, _FLOCK.pack(kind, os.SEEK_SET, start, 1, 0)))
    return None if got[0] == fcntl.F_UNLCK else got[0]


@dataclass(frozen=True)
class _Blocked(Exception):
    """A lock another process holds: on which byte, and whether it writes."""

    byte: int
    writer: bool


class _Unsupported(Exception):
    def __init__(self, err: OSError) -> None:
        super().__init__(os.strerror(err.errno or errno.EIO))


# ---------------------------------------------------------------------------- the registry
class _Entry:
    """The one lock description this process keeps for one file."""

    def __init__(self, key: tuple[int, int], fd: int, writable: bool, name: str) -> None:
        self.key = key
        self.fd = fd
        self.writable = writable
        self.name = name
        self.path = os.path.abspath(name)  # for records, written again after a chdir
        self.counts = [0, 0, 0]
        self.mode: Mode | None = None
        self.owner = os.getpid()  # a forked child does not touch its parent's locks
        self.unlocked = False  # the file system does not lock: counted, not locked
        self.closed = False
        self.recorded_by: int | None = None  # the pid whose record names it, if any

    def wanted(self) -> Mode | None:
        for mode in reversed(Mode):
            if self.counts[mode]:
                return mode
        return None


class _Registry:
    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.entries: dict[tuple[int, int], _Entry] = {}
        self.force_share = False  # --force-share: what read-only opens take by default
        self.command: str | None = None
        self.mountpoint: str | None = None
        self.warned: set[tuple[int, int]] = set()
        self.paused = False


_REGISTRY = _Registry()


def _after_fork_in_child() -> None:
    # A mutex held by another thread at the fork would never be released in the child.
    _REGISTRY.mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _change(entry: _Entry, new: Mode | None) -> None:
    """Move the entry's description from its mode to `new`: own byte first (atomic), then
    qemu's bytes, then the tests; a refusal leaves the old mode exactly as it was."""
    if entry.unlocked or entry.owner != os.getpid():
        entry.mode = new
        return
    try:
        _change_locks(entry, new)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise _Unsupported(exc) from None
        raise
    entry.mode = new


def _change_locks(entry: _Entry, new: Mode | None) -> None:
    old_plan, new_plan = _plan(entry.mode), _plan(new)
    fd = entry.fd
    stronger = _RANK[new_plan.own] > _RANK[old_plan.own]
    if stronger:
        _lock_own_byte(fd, new_plan.own)
    added = sorted(new_plan.held - old_plan.held)
    try:
        for byte in added:
            _setlk(fd, fcntl.F_RDLCK, byte)
        if new is not None and (entry.mode is None or new > entry.mode):
            _refuse_held(fd, new_plan.tested)
    except BaseException:
        for byte in added:
            _unlock_quietly(fd, byte)
        if stronger:
            _setlk(fd, old_plan.own, OWN_BYTE)  # back to the old type: never blocks
        raise
    for byte in sorted(old_plan.held - new_plan.held):
        _unlock_quietly(fd, byte)
    if _RANK[new_plan.own] < _RANK[old_plan.own]:
        _setlk(fd, new_plan.own, OWN_BYTE)  # a downgrade or an unlock: never blocks


def _lock_own_byte(fd: int, lock_type: int) -> None:
    """Our byte, in `lock_type`; _Blocked (naming the kind of holder) when another has it."""
    try:
        _setlk(fd, lock_type, OWN_BYTE)
    except OSError as exc:
        if exc.errno not in _CONFLICT:
            raise
        holder = _blocker(fd, lock_type, OWN_BYTE)
        raise _Blocked(OWN_BYTE, holder == fcntl.F_WRLCK or lock_type == fcntl.F_RDLCK) \
            from None


def _refuse_held(fd: int, tested: tuple[int, ...]) -> None:
    """_Blocked at the first of qemu's bytes `tested` that another description holds."""
    for byte in tested:
        if _blocker(fd, fcntl.F_WRLCK, byte) is not None:
            raise _Blocked(byte, byte not in (QEMU_UNSHARED_BASE + _WRITE,
                                              QEMU_UNSHARED_BASE + _RESIZE))


def _unlock_quietly(fd: int, byte: int) -> None:
    try:
        _setlk(fd, fcntl.F_UNLCK, byte)
    except OSError:
        pass


def _reopen(fd: int, name: str, writable: bool) -> int:
    """A new description of the file open on `fd` (the same inode, whatever its path is now)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(f"/proc/self/fd/{fd}", flags)
    except FileNotFoundError:  # no /proc: by name (the caller checks the inode)
        return os.open(name, flags)


def _move_to_writable(entry: _Entry, fd: int) -> bool:
    """Upgrade an entry whose description is read-only to EXCLUSIVE on a new, writable one.
    False when the file cannot be opened for writing (the caller then keeps SHARED)."""
    if entry.unlocked or entry.owner != os.getpid():
        entry.mode = Mode.EXCLUSIVE
        return True
    # Another description on our byte, or on a byte a writer must have alone? (GETLK from
    # the old description does not see the old description's own locks.)
    holder = _blocker(entry.fd, fcntl.F_WRLCK, OWN_BYTE)
    if holder is not None:
        raise _Blocked(OWN_BYTE, holder == fcntl.F_WRLCK)
    _refuse_held(entry.fd, _plan(Mode.EXCLUSIVE).tested)
    try:
        new_fd = _reopen(fd, entry.name, True)
    except OSError:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
            return False
        new_fd = os.dup(fd)  # cannot reopen it, but the caller's is open for writing
    try:
        for byte in sorted(_plan(Mode.EXCLUSIVE).held):
            _setlk(new_fd, fcntl.F_RDLCK, byte)
        # The only moment the file is not held: between these two calls.
        _setlk(entry.fd, fcntl.F_UNLCK, OWN_BYTE)
        try:
            _setlk(new_fd, fcntl.F_WRLCK, OWN_BYTE)
        except OSError as exc:
            if exc.errno not in _CONFLICT:
                raise
            try:
                _setlk(entry.fd, _plan(entry.mode).own, OWN_BYTE)
            except OSError:
                log.warning("%s: lost its shared lock while trying to write it", entry.name)
            raise _Blocked(OWN_BYTE, _blocker(new_fd, fcntl.F_WRLCK, OWN_BYTE) == fcntl.F_WRLCK) \
                from None
    except BaseException:
        os.close(new_fd)
        raise
    os.close(entry.fd)
    entry.fd, entry.writable, entry.mode = new_fd, True, Mode.EXCLUSIVE
    return True


class Hold:
    """One claim on one file; `release` (or leaving the `with`) gives it back."""

    def __init__(self, entry: _Entry | None, mode: Mode | None) -> None:
        self._entry = entry
        self.mode = mode

    def release(self) -> None:
        entry, self._entry = self._entry, None
        if entry is not None and self.mode is not None:
            _release(entry, self.mode)

    def __enter__(self) -> Hold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release(entry: _Entry, mode: Mode) -> None:
    with _REGISTRY.mutex:
        if entry.closed:
            return
        entry.counts[mode] -= 1
        new = entry.wanted()
        if new is None:
            if _REGISTRY.entries.get(entry.key) is entry:
                del _REGISTRY.entries[entry.key]
            _remove_record(entry)
            entry.closed = True
            os.close(entry.fd)  # closing the description releases everything on it
        elif entry.mode is not None and new < entry.mode:
            try:
                _change(entry, new)
            except (_Unsupported, OSError):
                pass
            _write_record(entry)


def lock_fd(fd: int, name: str, mode: Mode) -> Hold:
    """Take `mode` on the file open on `fd` (`name` is how messages call it), or raise
    ImageBusy naming who holds it. An EXCLUSIVE claim on a file this process cannot open
    for writing is held SHARED, which keeps every writer out just the same."""
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    blocked: _Blocked | None = None
    with _REGISTRY.mutex:
        entry = _REGISTRY.entries.get(key)
        try:
            if entry is None:
                entry, mode = _new_entry(fd, key, name, mode)
                _REGISTRY.entries[key] = entry
            elif entry.mode is None or mode > entry.mode:
                if mode is Mode.EXCLUSIVE and not entry.writable:
                    if not _move_to_writable(entry, fd):
                        mode = Mode.SHARED
                        if entry.mode is None or mode > entry.mode:
                            _change(entry, mode)
                else:
                    _change(entry, mode)
                _write_record(entry)
            entry.counts[mode] += 1
        except _Blocked as exc:
            blocked = exc
        except _Unsupported as exc:
            entry = _unlocked_entry(entry, fd, key, name, mode, exc)
            entry.counts[mode] += 1
    if blocked is not None:
        raise ImageBusy(busy_message(name, key, mode, blocked.writer, blocked.byte), name)
    if mode is Mode.FORCE_SHARED:
        _warn_if_written(entry, name)
    _maybe_pause(name, mode)
    return Hold(entry, mode)


def _new_entry(fd: int, key: tuple[int, int], name: str, mode: Mode) -> tuple[_Entry, Mode]:
    """The registry's own description of the file (so that the caller may close its own),
    open for writing when the claim is EXCLUSIVE."""
    writable = mode is Mode.EXCLUSIVE
    lock: int | None = None
    try:
        lock = _reopen(fd, name, writable)
    except OSError:
        if writable and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
            lock = os.dup(fd)  # cannot reopen it, but the caller's is open for writing
        elif writable:
            mode, writable = Mode.SHARED, False  # not writable by us: held shared
    if lock is None:
        try:
            lock = _reopen(fd, name, False)
        except OSError:
            lock = os.dup(fd)  # the caller's own description then (closed with ours)
    entry = _Entry(key, lock, writable, name)
    try:
        if (os.fstat(lock).st_dev, os.fstat(lock).st_ino) != key:
            raise OSError(errno.ESTALE, "the file was replaced while it was opened")
        _change(entry, mode)
    except BaseException:
        os.close(lock)
        raise
    _write_record(entry)
    return entry, mode


def _unlocked_entry(entry: _Entry | None, fd: int, key: tuple[int, int], name: str, mode: Mode,
                    exc: _Unsupported) -> _Entry:
    """The file system does not do OFD locks: say so once, and go on without them."""
    if entry is None:
        entry = _Entry(key, _reopen(fd, name, False), False, name)
        _REGISTRY.entries[key] = entry
    entry.unlocked = True
    entry.mode = mode if entry.mode is None else max(mode, entry.mode)
    log.warning("%s: cannot be locked (%s): other programs are not kept from using it at the "
                "same time", name, exc)
    return entry


def lock_path(path: str | os.PathLike[str], mode: Mode) -> Hold:
    """Take `mode` on the file at `path` for as long as the hold is kept (the file itself is
    opened by whoever reads or writes it; the registry keeps its own description). A path
    that cannot be opened or is not a regular file gets an empty hold: whoever opens it
    next says why, in the words of its own command."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return Hold(None, None)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Hold(None, None)
        return lock_fd(fd, str(path), mode)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- the process
def describe_process(*, command: str | None = None, mountpoint: str | None = None) -> None:
    """What this process is, for the records others read when they are refused (the command
    line comes without secrets: the caller scrubs it)."""
    if command is not None:
        _REGISTRY.command = command
    if mountpoint is not None:
        _REGISTRY.mountpoint = mountpoint or None
    with _REGISTRY.mutex:
        for entry in _REGISTRY.entries.values():
            _write_record(entry)


def set_force_share(value: bool) -> None:
    """--force-share: read-only opens that ask for no mode take FORCE_SHARED."""
    _REGISTRY.force_share = value


def force_share_default() -> bool:
    return _REGISTRY.force_share


def mode_for(writable: bool, force_share: bool | None = None) -> Mode:
    if writable:
        return Mode.EXCLUSIVE
    share = _REGISTRY.force_share if force_share is None else force_share
    return Mode.FORCE_SHARED if share else Mode.SHARED


def adopt() -> None:
    """In a forked child that goes on using the files (the mount daemon): the inherited
    descriptions, and so the locks, are this process's now; records name its pid."""
    with _REGISTRY.mutex:
        for entry in _REGISTRY.entries.values():
            entry.owner = os.getpid()
            _write_record(entry)


def hand_over() -> None:
    """In the parent after such a fork: forget the locks without touching the descriptions
    (the child holds them now) and drop this process's records."""
    with _REGISTRY.mutex:
        for entry in _REGISTRY.entries.values():
            _remove_record(entry)
            entry.closed = True
            os.close(entry.fd)
        _REGISTRY.entries.clear()


def held_here() -> dict[tuple[int, int], Mode | None]:
    """(st_dev, st_ino) -> mode of every file this process holds (for tests and checks)."""
    with _REGISTRY.mutex:
        return {key: entry.mode for key, entry in _REGISTRY.entries.items()}


# ---------------------------------------------------------------------------- records
def _own_command() -> str:
    if _REGISTRY.command is None:
        _REGISTRY.command = holders.cmdline(os.getpid())
    return _REGISTRY.command


def _write_record(entry: _Entry) -> None:
    """Writers and mounts leave a record; a short reader does not (a file per open would
    cost more than the open: a refusal finds such a reader in /proc instead)."""
    if entry.mode is None or entry.mode is Mode.FORCE_SHARED or (
            entry.mode is Mode.SHARED and _REGISTRY.mountpoint is None):
        _remove_record(entry)
        return
    if holders.write_record(entry.key, {"mode": entry.mode.word, "command": _own_command(),
                                        "mountpoint": _REGISTRY.mountpoint,
                                        "path": entry.path}):
        entry.recorded_by = os.getpid()


def _remove_record(entry: _Entry) -> None:
    if entry.recorded_by != os.getpid():
        return  # none written, or the parent's (after a fork): not this process's to remove
    entry.recorded_by = None
    holders.remove_record(entry.key)


def _remove_own_records() -> None:
    """At exit: a process that ends normally leaves no records (its locks end with it)."""
    for entry in list(_REGISTRY.entries.values()):
        if entry.owner == os.getpid():
            _remove_record(entry)


atexit.register(_remove_own_records)


def busy_message(name: str, key: tuple[int, int], wanted: Mode, writer: bool,
                 byte: int = OWN_BYTE) -> str:
    return holders.busy_message(name, key, to_write=wanted is Mode.EXCLUSIVE, writer=writer,
                                qemu=byte != OWN_BYTE)


def writer_of(fd: int) -> str | None:
    """Who writes the file open on `fd` (another process), described; None when nobody."""
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    with _REGISTRY.mutex:
        entry = _REGISTRY.entries.get(key)
        probe = entry.fd if entry is not None and not entry.closed else fd
        try:
            written = _blocker(probe, fcntl.F_RDLCK, OWN_BYTE) is not None or \
                _blocker(probe, fcntl.F_WRLCK, QEMU_PERM_BASE + _WRITE) is not None
        except OSError:
            return None
    if not written:
        return None
    return holders.writer_named(key)


def writer_of_path(path: str | os.PathLike[str]) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return writer_of(fd)
    finally:
        os.close(fd)


def _warn_if_written(entry: _Entry, name: str) -> None:
    if entry.key in _REGISTRY.warned:
        return
    writer = writer_of(entry.fd) if not entry.closed else None
    if writer is not None:
        _REGISTRY.warned.add(entry.key)
        log.warning("%s: %s is writing it; --force-share reads it anyway: what is read may be "
                    "inconsistent", name, writer)


def _maybe_pause(name: str, mode: Mode) -> None:
    spec = os.environ.get(ENV_PAUSE)
    if not spec or spec.count(":") < 2 or _REGISTRY.paused:
        return
    want_mode, want_name, flag = spec.split(":", 2)
    if want_mode != mode.word or os.path.basename(name) != want_name:
        return
    _REGISTRY.paused = True
    Path(f"{flag}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_LIMIT
    while not os.path.exists(f"{flag}.go") and time.monotonic() < deadline:
        time.sleep(0.02)


__all__ = ["Mode", "Hold", "lock_fd", "lock_path", "describe_process", "set_force_share",
           "mode_for", "adopt", "hand_over", "writer_of", "writer_of_path", "busy_message",
           "held_here", "safe_text"]
