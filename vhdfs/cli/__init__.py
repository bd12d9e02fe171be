"""The `vhdfs` command: argument parsing, printing and exit codes. No logic lives here.

Each module in `vhdfs.cli.commands` adds one subcommand through `register(subparsers)`;
they are discovered, so a new command is a new module. What every command shares (the
global options before or after its name, --json, --progress, warnings, the error line and
exit code) is applied here, from `vhdfs.cli.conventions`.
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
from vhdfs.cli.conventions import (
    CommandWarnings,
    Run,
    add_global_options,
    command_name,
    fail,
    json_requested,
)
from vhdfs.errors import UsageError, VhdfsError
from vhdfs.secrets import ScrubbingWriter, scrub_logger

INTERNAL_ERROR_EXIT = 70
INTERRUPTED_EXIT = 130


class ArgumentError(UsageError):
    """What argparse refuses, with the parser's name (`vhdfs convert`) for the error line."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{message} (see {prog} --help)")
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (with where to find help), exit code 2, like every error."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(self.prog, message)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when `argv` names a command, only that command's module is imported
    (the mount's and the guest tools' imports cost a noticeable part of a short command)."""
    from vhdfs.cli import commands

    parser = _Parser(
        prog="vhdfs", description="VHD differencing chains on Linux: inspect, create, convert, "
        "mount, commit and upload.")
    parser.add_argument("--version", action="version", version=f"vhdfs {__version__}")
    add_global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__))
    wanted = command_name(argv or [])
    module_name = wanted.replace("-", "_") if wanted else None
    if module_name in names:
        names = [module_name]
    for name in names:
        importlib.import_module(f"vhdfs.cli.commands.{name}").register(sub)
    for command in sub.choices.values():  # the global options, also after the command name
        add_global_options(command, after_command=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    log = logging.getLogger("vhdfs")
    # Every text the command prints or logs passes the one scrubber (vhdfs.secrets): no SAS,
    # key or token reaches the terminal, a --json reader or the mount's log.
    scrub_logger(log)
    terminal = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ScrubbingWriter(terminal[0]), ScrubbingWriter(terminal[1])
    handler = CommandWarnings()  # -q silences it; --json results list what it saw
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING)
    args: argparse.Namespace | None = None
    run = Run(handler)
    arguments = sys.argv[1:] if argv is None else argv
    run.json = json_requested(arguments)  # until parsed: an error while parsing is JSON too
    try:
        parser = build_parser(arguments)
        args = parser.parse_args(arguments)
        run.start(args)
        _describe_for_locks(arguments, args.force_share)
        code = args.func(args)
        return int(code or 0)
    except ArgumentError as exc:
        return fail(str(exc), exc.exit_code, "UsageError", run.json, prefix=f"{exc.prog}: error")
    except VhdfsError as exc:
        # Names from inside an image reach messages; a terminal must never get their control
        # characters (the readers already replace them: this is the second line of defence).
        return fail(str(exc), exc.exit_code, type(exc).__name__, run.json)
    except KeyboardInterrupt:
        return fail("interrupted", INTERRUPTED_EXIT, "Interrupted", run.json, prefix="vhdfs")
    except BrokenPipeError:
        # The reader of our output went away (vhdfs cat ... | head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one line, a report hint, the trace only on request
        if os.environ.get("VHDFS_DEBUG"):
            traceback.print_exc()  # through the scrubbing stderr
            return INTERNAL_ERROR_EXIT
        return fail(f"{type(exc).__name__}: {exc} (this is a bug; run with VHDFS_DEBUG=1 for "
                    "details and report it)", INTERNAL_ERROR_EXIT, "InternalError", run.json,
                    prefix="vhdfs: internal error")
    finally:
        if args is not None:
            from vhdfs.cli.common import print_stats
            from vhdfs.sources import locks

            print_stats(args)
            locks.set_force_share(False)  # in-process callers (tests) start afresh
        run.end()
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
