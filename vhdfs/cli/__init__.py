"""The `vhdfs` command: argument parsing, printing and exit codes. No logic lives here.

Each module in `vhdfs.cli.commands` adds one subcommand through `register(subparsers)`;
they are discovered, so a new command is a new module.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from typing import NoReturn

from vhdfs import __version__
from vhdfs.errors import VhdfsError
from vhdfs.secrets import ScrubbingWriter, scrub_logger
from vhdfs.vhd.dynheader import printable

INTERNAL_ERROR_EXIT = 70
FORCE_SHARE = ("--force-share", "-U")
FORCE_SHARE_HELP = ("read images that another process is writing (as qemu-img -U): reading "
                    "commands only, with a warning, since what is read may be inconsistent")


class _OneLineWarnings(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(f"vhdfs: warning: {printable(record.getMessage())}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (with where to find help), exit code 2, like every error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a command, only that command's module is imported
    (the mount's and the guest tools' imports cost a noticeable part of a short command)."""
    from vhdfs.cli import commands

    parser = _Parser(
        prog="vhdfs", description="VHD differencing chains on Linux: inspect, create, convert, "
        "mount, commit and upload.")
    parser.add_argument("--version", action="version", version=f"vhdfs {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no warnings or progress")
    parser.add_argument(*FORCE_SHARE, action="store_true", help=FORCE_SHARE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__))
    wanted = next((a for a in argv or [] if not a.startswith("-")), None)
    module_name = wanted.replace("-", "_") if wanted else None
    if module_name in names:
        names = [module_name]
    for name in names:
        importlib.import_module(f"vhdfs.cli.commands.{name}").register(sub)
    for command in sub.choices.values():  # a global option, also after the command name
        command.add_argument(*FORCE_SHARE, action="store_true", default=argparse.SUPPRESS,
                             help=FORCE_SHARE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    log = logging.getLogger("vhdfs")
    # Every text the command prints or logs passes the one scrubber (vhdfs.secrets): no SAS,
    # key or token reaches the terminal, a --json reader or the mount's log.
    scrub_logger(log)
    terminal = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbingWriter(terminal[0]), ScrubbingWriter(terminal[1])
    handler = _OneLineWarnings()
    log.addHandler(handler)
    log.propagate = False
    args: argparse.Namespace | None = None
    try:
        arguments = sys.argv[1:] if argv is None else argv
        parser = build_parser(arguments)
        args = parser.parse_args(arguments)
        log.setLevel(logging.ERROR if args.quiet else logging.WARNING)
        _describe_for_locks(arguments, args.force_share)
        code = args.func(args)
        return int(code or 0)
    except VhdfsError as exc:
        # Names from inside an image reach messages; a terminal must never get their control
        # characters (the readers already replace them: this is the second line of defence).
        print(f"vhdfs: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vhdfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (vhdfs cat ... | head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line, a report hint, the trace only on request
        if os.environ.get("VHDFS_DEBUG"):
            traceback.print_exc()  # through the scrubbing stderr
            return INTERNAL_ERROR_EXIT
        print(f"vhdfs: internal error: {type(exc).__name__}: {exc} (this is a bug; run with "
              "VHDFS_DEBUG=1 for details and report it)", file=sys.stderr)
        return INTERNAL_ERROR_EXIT
    finally:
        if args is not None:
            from vhdfs.cli.common import print_stats
            from vhdfs.sources import locks

            print_stats(args)
            locks.set_force_share(False)  # in-process callers (tests) start afresh
        log.removeHandler(handler)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a reader gone away: nothing more to say
                stream.flush()
        sys.stdout, sys.stderr = terminal


def _describe_for_locks(arguments: list[str], force_share: bool) -> None:
    """What the lock records say this process is (without secrets), and --force-share."""
    import shlex

    from vhdfs.sources import locks

    locks.describe_process(command=locks.safe_text(shlex.join(["vhdfs", *arguments])),
                           mountpoint="")
    locks.set_force_share(force_share)


def run() -> None:
    sys.exit(main())
