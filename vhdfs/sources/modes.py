"""The permission bits of the files vhdfs creates.

A new file gets what the umask leaves of 0666, as qemu-img's, cp's and every other tool's
new files do (0644 under umask 022, 0600 under 077). Writers that build a file under a
temporary name (mkstemp makes it 0600 whatever the umask) give it that mode before it is
renamed into place. A file replaced with --force keeps its own mode, as `cp` over an
existing file does: replacing a shared image must not make it private, nor the reverse.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status; elsewhere it can only be
    read by setting it, which is done under a lock so that no thread of ours creates a file
    in between (another library's thread still could: hence /proc first)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode(replacing: str | os.PathLike[str] | None = None) -> int:
    """The mode for a file that is about to appear at `replacing`: the mode of the regular
    file there now (it is replaced, and keeps its mode), else 0666 without the umask. A
    symbolic link in the way is replaced itself, never followed: it lends no mode."""
    if replacing is not None:
        try:
            info = os.lstat(replacing)
        except OSError:
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    return 0o666 & ~current_umask()


def give_new_file_mode(path: str | os.PathLike[str],
                       replacing: str | os.PathLike[str] | None = None) -> None:
    """chmod the finished temporary file `path` to `new_file_mode(replacing)` before it is
    renamed onto `replacing` (or into a free name)."""
    os.chmod(Path(path), new_file_mode(replacing))
