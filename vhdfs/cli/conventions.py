"""The conventions every command follows, kept in one place: `vhdfs.cli` applies them to
every command it registers and around every run, so a new command module gets them for free
and stays small (it parses its own arguments, calls the library and prints its result).

Global options, accepted before or after the command name:
  -q, --quiet        no warnings, no progress (an explicit --progress still shows progress)
  -U, --force-share  read images that another process is writing (reading commands only)
  --json             the result as one JSON object on standard output
  --progress MODE    auto (a bar on a terminal, a line at each quarter otherwise), bar,
                     lines, json (one JSON object per line, for pipelines), none

Where output goes:
  standard output  the command's result and nothing else: text, or with --json one JSON
                   object (`emit`), or the data itself (cat, get ... -)
  standard error   warnings (`vhdfs: warning: ...`), progress (all modes, JSON lines too),
                   the error line
Errors are one line on standard error (`vhdfs: error: ...`) and the exit code (README's
table), --json or not. With --json, standard output also gets one object,
{"error": {"message": ..., "exit_code": N, "type": "ParentNotFound"}}, so that a pipeline
reading standard output always gets JSON; a result object never has a top-level "error" key.
Everything passes the scrubber (`vhdfs.secrets`): `vhdfs.cli.main` wraps both streams.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from vhdfs import progress
from vhdfs.errors import UsageError
from vhdfs.quoting import printable

FORCE_SHARE = ("--force-share", "-U")
FORCE_SHARE_HELP = ("read images that another process is writing (as qemu-img -U): reading "
                    "commands only, with a warning, since what is read may be inconsistent")
#: Options that take a value: what follows them is not the command name.
_VALUED = ("--progress",)
#: Warnings kept for a --json result (a long foreground mount must not grow without bound).
MAX_KEPT_WARNINGS = 100


def add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The global options, on the main parser (`after_command` False: with their defaults)
    or on a command's parser (True: given there, they override what came before the name;
    not given, they leave it alone)."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    group = parser.add_argument_group("global options (before or after the command name)")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                       help="no warnings or progress")
    group.add_argument(*FORCE_SHARE, action="store_true", default=default(False),
                       help=FORCE_SHARE_HELP)
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print the result as one JSON object on standard output (errors: "
                       "the error line on standard error and {\"error\": {...}} on standard "
                       "output)")
    group.add_argument("--progress", choices=progress.MODES, default=default(None),
                       metavar="MODE",
                       help="how long jobs show progress on standard error: auto (a bar on a "
                       "terminal, lines otherwise), bar, lines, json (a JSON object per "
                       "line), none (default: auto, none with -q)")


def command_name(arguments: list[str]) -> str | None:
    """The command named in `arguments` (the first word that is not an option or an
    option's value), to import only that command's module."""
    skip = False
    for arg in arguments:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def json_requested(arguments: list[str]) -> bool:
    """Whether --json was given, read from the words themselves (for an error raised while
    they are being parsed)."""
    words = arguments[:arguments.index("--")] if "--" in arguments else arguments
    return "--json" in words


def progress_mode(args: argparse.Namespace) -> str:
    """--progress as given; else none with -q, auto otherwise."""
    if args.progress is not None:
        return str(args.progress)
    return "none" if args.quiet else "auto"


class CommandWarnings(logging.Handler):
    """Every warning the command logs: one line on standard error (unless -q), and kept
    for the --json result (`emit` adds them as "warnings")."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []
        self.quiet = False

    def emit(self, record: logging.LogRecord) -> None:
        text = printable(record.getMessage())
        if len(self.seen) < MAX_KEPT_WARNINGS:
            self.seen.append(text)
        if not self.quiet:
            print(f"vhdfs: warning: {text}", file=sys.stderr)


class Run:
    """What `vhdfs.cli.main` sets up for one command from its global options."""

    def __init__(self, warnings: CommandWarnings) -> None:
        self.warnings = warnings
        self.json = False

    def start(self, args: argparse.Namespace) -> None:
        self.json = bool(args.json)
        self.warnings.quiet = bool(args.quiet)
        progress.configure(progress_mode(args))
        args.run = self

    @staticmethod
    def end() -> None:
        progress.configure(None)  # in-process callers (tests) start afresh


def emit(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Print a command's --json result: `result` and the warnings logged while it ran."""
    run: Run = args.run
    print_json({**result, "warnings": list(run.warnings.seen)})


def report(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """A command's result: `text` for a person or, with --json, `result` (see `emit`)."""
    if args.json:
        emit(args, result)
    else:
        print(text)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def fail(message: str, exit_code: int, kind: str, as_json: bool, *,
         prefix: str = "vhdfs: error") -> int:
    """Report a failure: `prefix: message` on standard error and, with --json, the error
    object on standard output; returns the exit code."""
    message = printable(message)
    print(f"{prefix}: {message}", file=sys.stderr)
    if as_json:
        print_json({"error": {"message": message, "exit_code": exit_code, "type": kind}})
    return exit_code


def no_json(args: argparse.Namespace, why: str) -> None:
    """Refuse --json (exit 2) where the command's output is the data itself."""
    if args.json:
        raise UsageError(f"--json: {why}")
