"""Run a mount in the background and return only once it answers, or with its error.

The command has already opened and checked the chain; then it forks. The child starts a
new session, mounts and serves; once a read through the mount succeeds it writes `ok` on a
pipe, and only then lets go of the terminal. A child that fails before that writes its exit
code and one-line message instead. The parent waits for either and exits 0 or with the
error, so `vhdfs mount IMAGE DIR && cp DIR/disk.vhd ...` is safe.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vhdfs.errors import MountError, VhdfsError

log = logging.getLogger("vhdfs")

START_TIMEOUT = 60.0
INTERNAL_ERROR_EXIT = 70
SYSLOG_SOCKET = "/dev/log"

StartFn = Callable[[Callable[[], None]], None]


def run_detached(start: StartFn, mountpoint: Path, *, log_file: Path | None = None,
                 timeout: float = START_TIMEOUT) -> int:
    """Fork; the child runs `start(ready)`. Returns the daemon's pid once it is ready."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        _daemon(start, write_end, log_file)  # never returns
    os.close(write_end)
    try:
        answer = _wait_for_answer(read_end, timeout)
    finally:
        os.close(read_end)
    if answer is None:
        _abandon(pid, mountpoint)
        raise MountError(f"{mountpoint}: the mount did not answer within {timeout:.0f} s; "
                         "stopped it (nothing is left mounted)")
    if answer == b"ok":
        return pid
    if answer:
        code_text, _, message = answer.decode("utf-8", "replace").partition(" ")
        error = MountError(message)
        error.exit_code = int(code_text) if code_text.isdigit() else MountError.exit_code
        _reap(pid)
        raise error
    status = _reap(pid)
    raise MountError(f"{mountpoint}: the mount daemon exited ({status}) before the mount "
                     "was ready; run with --foreground to see why")


def _wait_for_answer(fd: int, timeout: float) -> bytes | None:
    """Everything the child wrote, up to end of file; None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.strip()
        data += chunk
        if data.endswith(b"\n"):
            return data.strip()


def _reap(pid: int) -> str:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _abandon(pid: int, mountpoint: Path) -> None:
    """Stop a daemon that never became ready, and leave nothing mounted."""
    for signum, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            time.sleep(0.05)
        else:
            continue
        break
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _daemon(start: StartFn, pipe_fd: int, log_file: Path | None) -> None:
    os.setsid()
    os.chdir("/")  # hold no folder busy
    reported = False

    def ready() -> None:
        nonlocal reported
        _detach(log_file)
        os.write(pipe_fd, b"ok\n")
        os.close(pipe_fd)
        reported = True

    code, message = 0, ""
    try:
        start(ready)
    except VhdfsError as exc:
        code, message = exc.exit_code, str(exc)
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    except BaseException as exc:  # noqa: BLE001 - a bug: report it rather than hang the parent
        code = INTERNAL_ERROR_EXIT
        message = (f"internal error: {type(exc).__name__}: {exc} (this is a bug; run with "
                   "--foreground and VHDFS_DEBUG=1 for details and report it)")
    try:
        if not reported:
            os.write(pipe_fd, f"{code} {message}\n".encode())
        elif code:
            log.error("%s", message)
    finally:
        logging.shutdown()
        os._exit(code)


def _detach(log_file: Path | None) -> None:
    """From now on nothing goes to the terminal: stdio to /dev/null (or the log file), and
    the log to the log file, else to syslog where there is one."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    target = null
    if log_file is not None:
        target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    for fd in {null, target}:
        os.close(fd)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler: logging.Handler
    if log_file is not None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s vhdfs[%(process)d] %(levelname)s: "
                                               "%(message)s"))
    elif os.path.exists(SYSLOG_SOCKET):
        handler = logging.handlers.SysLogHandler(SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter("vhdfs[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
