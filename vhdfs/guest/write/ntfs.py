"""NTFS through ntfs-3g, mounted on the partition file in the private folder.

Why ntfs-3g: it is the NTFS driver Linux distributions trust for writing, it mounts a
regular file without a loop device (Debian installs it setuid root, so it mounts for any
user who may use FUSE), and ntfsprogs alone cannot do the job (ntfscp copies a file in, but
nothing makes a folder or removes one). ntfs-3g runs in the foreground as our child
(`no_detach`), so that after the unmount vhdfs waits for it to write its caches and mark the
volume clean, and only then takes the chain's mount down. `windows_names` makes it refuse
names Windows cannot open (vhdfs refuses them before, too).

Each file is copied under a temporary name in its folder and renamed over the final name,
so a file is either the old one or the whole new one, even when vhdfs is killed part way
(then the temporary file is what is left: `.vhdfs-put-PID.tmp`). A replaced file's security
descriptor and DOS attributes are copied to the new one first (ntfs-3g's `system.ntfs_acl`
and `system.ntfs_attrib`), as Windows keeps them when a file is copied over another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vhdfs.guest.write.errors import ToolFailed
from vhdfs.guest.write.plan import MakeDir, Remove, WriteFile, shown
from vhdfs.guest.write.tools import find_tool, pause_for_test, tool_message
from vhdfs.mounttable import mount_entry

log = logging.getLogger("vhdfs")

OPTIONS = "no_detach,windows_names,big_writes"
MOUNT_TIMEOUT = 60.0
EXIT_TIMEOUT = 600.0  # writing back its caches of a large copy may take a while
CHUNK = 1024 * 1024
KEPT_ATTRIBUTES = ("system.ntfs_acl", "system.ntfs_attrib")
BANNERS = ("Version ", "Requested device", "Mounted ", "Cmdline options", "Mount options",
           "Ownership and permissions", "Unmounting ")


def _errno_text(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class NtfsWriter:
    tool = "ntfs-3g"

    def __init__(self, root: Path) -> None:
        self.root = root  # ntfs-3g's mount point

    @classmethod
    @contextlib.contextmanager
    def mounted(cls, partition: Path, mountpoint: Path) -> Iterator[NtfsWriter]:
        """ntfs-3g on `partition` at `mountpoint` for the block; unmounted and waited
        for at its end (a failure to write back is ToolFailed)."""
        ntfs3g, fusermount = find_tool("ntfs-3g"), find_tool("fusermount3")
        mountpoint.mkdir(mode=0o700)
        output = tempfile.TemporaryFile()
        process = subprocess.Popen([ntfs3g, "-o", OPTIONS, str(partition), str(mountpoint)],
                                   stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT)

        def said() -> str:
            output.seek(0)
            return tool_message(output.read().decode(errors="replace"), BANNERS)

        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while mount_entry(mountpoint) is None:
                if process.poll() is not None:
                    raise ToolFailed(f"ntfs-3g could not mount the volume: "
                                     f"{said() or f'exit status {process.returncode}'}",
                                     "nothing was written")
                if time.monotonic() > deadline:
                    process.kill()
                    raise ToolFailed(f"ntfs-3g did not mount the volume within "
                                     f"{MOUNT_TIMEOUT:.0f} s", "nothing was written")
                time.sleep(0.02)
            failed = False
            try:
                yield cls(mountpoint)
            except BaseException:
                failed = True
                raise
            finally:
                cls._unmount(process, mountpoint, fusermount, said, quiet=failed)
        finally:
            output.close()
            if process.poll() is None:
                process.kill()
                process.wait()

    @staticmethod
    def _unmount(process: subprocess.Popen, mountpoint: Path, fusermount: str,
                 said: Callable[[], str], *, quiet: bool) -> None:
        """Unmount, then wait until ntfs-3g has written everything back and exited."""
        reason = ""
        for _ in range(100):  # a file closed a moment ago may still be busy
            done = subprocess.run([fusermount, "-u", str(mountpoint)], capture_output=True,
                                  text=True)
            if done.returncode == 0 or mount_entry(mountpoint) is None:
                break
            reason = done.stderr.strip()
            time.sleep(0.1)
        else:
            subprocess.run([fusermount, "-u", "-z", str(mountpoint)], capture_output=True)
            if not quiet:
                raise ToolFailed(f"ntfs-3g's mount could not be unmounted ({reason}); it was "
                                 "detached lazily")
        try:
            code = process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code and not quiet:
            raise ToolFailed(f"ntfs-3g exited with status {code} after unmounting: {said()}",
                             "the volume may not be marked clean; check it with chkdsk or "
                             "ntfsfix -n")

    def _path(self, path: tuple[str, ...]) -> Path:
        return self.root.joinpath(*path)

    def make_dir(self, change: MakeDir) -> None:
        try:
            os.mkdir(self._path(change.path), 0o755)
        except OSError as exc:
            raise ToolFailed(f"ntfs-3g: {_errno_text(exc)}",
                             f"{shown(change.path)} was not made") from None

    def remove(self, change: Remove) -> None:
        try:
            if change.is_dir:
                os.rmdir(self._path(change.path))
            else:
                os.unlink(self._path(change.path))
        except OSError as exc:
            raise ToolFailed(f"ntfs-3g: {_errno_text(exc)}",
                             f"{shown(change.path)} is still there") from None

    def write_file(self, change: WriteFile, advance: Callable[[int], None]) -> None:
        final = self._path(change.path)
        temporary = final.with_name(f".vhdfs-put-{os.getpid()}.tmp")
        state = f"{shown(change.path)} is unchanged" if change.replaces else \
            f"{shown(change.path)} was not written"
        try:
            with open(change.source, "rb") as source, open(temporary, "xb") as out:
                while data := source.read(CHUNK):
                    out.write(data)
                    advance(len(data))
                    if out.tell() < change.size:
                        pause_for_test("in-file")
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            where = "reading the source" if exc.filename == str(change.source) else "ntfs-3g"
            raise ToolFailed(f"{where}: {_errno_text(exc)}", state) from None
        if change.replaces is not None:
            self._keep_attributes(final, temporary)
        try:
            os.rename(temporary, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise ToolFailed(f"ntfs-3g: {_errno_text(exc)}", state) from None

    @staticmethod
    def _keep_attributes(old: Path, new: Path) -> None:
        for name in KEPT_ATTRIBUTES:
            try:
                os.setxattr(new, name, os.getxattr(old, name))
            except OSError as exc:
                log.warning("%s: its %s could not be kept (%s); the new file has ntfs-3g's "
                            "default", old.name, name, _errno_text(exc))
