"""What `put`, `rm` and `mkdir` share: open the chain for writing, plan, mount it in a
private folder, let the file system's tool make the changes, take the mount down.

The steps are those of `vhdfs mount --rw` followed by a tool and `vhdfs umount`, in one
command and without root:
1. the chain is opened writable: the top layer exclusively, its parents shared (a busy
   image is refused here, exit 9); a base or a chain's only layer needs --force;
2. the request is planned through the chain (vhdfs.guest.write.plan): every refusal comes
   before anything is mounted or written; the tool is looked for;
3. the children of the top layer are warned of, as mount --rw warns (the write invalidates
   them);
4. the chain is mounted writable in a private folder (vhdfs.fuse.private: the daemon takes
   the locks over), the tool changes the partition file there (vhdfs.guest.write.run);
5. the mount is taken down: flushed, the daemon gone, the top layer closed. Only then does
   the command report, success or failure.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from vhdfs.azure.location import looks_remote
from vhdfs.chain import Chain
from vhdfs.cli.common import add_image_options, layer_names, open_image, warn_children
from vhdfs.cli.conventions import report
from vhdfs.errors import FormatError, RefusedError, UsageError, VhdfsError
from vhdfs.fuse.mountpoint import check_fuse_available
from vhdfs.fuse.private import private_mount
from vhdfs.guest.volumes import DiskVolumes, open_volumes
from vhdfs.guest.write import (
    Outcome,
    Plan,
    ToolFailed,
    WriteFailed,
    apply,
    check_tools,
    open_writer,
    summary,
)
from vhdfs.progress import Progress
from vhdfs.quoting import escape
from vhdfs.resolve import looks_like_vhd, open_source
from vhdfs.vhdx.layer import is_vhdx

log = logging.getLogger("vhdfs")


@dataclass
class Written:
    """A finished guest write, for the command's report."""

    plan: Plan
    outcome: Outcome
    chain: list[str]
    seconds: float


def add_write_options(parser: argparse.ArgumentParser, force_help: str) -> None:
    parser.add_argument("--volume", type=int, metavar="N",
                        help="the volume (partition number, see vhdfs volumes); by default "
                        "the one where most of GUESTPATH exists")
    parser.add_argument("--force", action="store_true", help=force_help)
    add_image_options(parser)


FORCE_BASE = ("write into a base or a chain's only layer (normally a differencing child is "
              "written, and its parents stay as they are)")


def _open_for_writing(args: argparse.Namespace, command: str) -> Chain:
    if args.force_share:
        raise UsageError(f"--force-share is for reading: {command} writes IMAGE and holds it "
                         "alone")
    if looks_remote(args.image):
        raise UsageError(f"{args.image}: {command} writes local images only; write a local "
                         "child, then upload it")
    check_fuse_available()
    try:
        return open_image(args, args.image, writable=True)
    except FormatError:
        if _is_raw(args.image):
            raise UsageError(f"{args.image}: is not a VHD or VHDX (a raw image?); {command} "
                             "writes into VHD and VHDX images only: import it first (vhdfs "
                             f"convert {args.image} NEW.vhd --to dynamic) and write a child "
                             "of it") from None
        raise


def _is_raw(spec: str) -> bool:
    try:
        with open_source(spec) as source:
            return not looks_like_vhd(source) and not is_vhdx(source)
    except VhdfsError:
        return False


def _require_child(chain: Chain, args: argparse.Namespace) -> None:
    top = chain.top
    if top.is_differencing or args.force:
        return
    raise RefusedError(f"{args.image}: is not a differencing disk (its chain's only layer); "
                       "writing into it changes what every child of it reads: create a child "
                       f"and write there (vhdfs create child.vhd --parent {args.image}), or "
                       "pass --force to write into it anyway")


def write_guest(args: argparse.Namespace, command: str,
                make_plan: Callable[[DiskVolumes], Plan], *, progress: bool = False) -> Written:
    """Steps 1-5 of the module docstring; a failure of the tool is WriteFailed, raised
    once the image is complete and closed, saying so."""
    started = time.monotonic()
    chain = _open_for_writing(args, command)
    try:
        _require_child(chain, args)
        names = layer_names(chain)
        plan = make_plan(open_volumes(chain))
        outcome = Outcome()
        if not plan.changes:
            return Written(plan, outcome, names, time.monotonic() - started)
        check_tools(plan.target)
        warn_children(chain, list(args.search))
        meter = Progress(f"{command} {escape('/' + '/'.join(plan.path), backslash=False)}",
                         plan.bytes, quiet=not progress)
        failure: WriteFailed | None = None
        with private_mount(chain, prefix=f"vhdfs-{command}-") as mount:
            try:
                with open_writer(plan.target, mount.file(plan.target.file),
                                 mount.root) as writer:
                    apply(plan, writer, meter.advance if progress else _ignore, outcome)
            except WriteFailed as exc:
                failure = exc
            except ToolFailed as exc:  # the tool's own mount or unmount
                failure = WriteFailed(f"{plan.target.description}: {exc.message}"
                                      f"{'; ' + exc.state if exc.state else ''}; "
                                      f"{summary(outcome.done)}")
            problems = mount.problems()
            if failure is not None and problems:
                failure.message += f"; the image's mount logged: {problems[0]}"
            elif problems:
                for problem in problems:
                    log.warning("the image's mount: %s", problem)
        if failure is not None:
            failure.message += (f"; {args.image} is complete and valid with what was done "
                                f"(vhdfs changes {args.image} lists it)")
            raise failure
        if progress:
            meter.finish()
        return Written(plan, outcome, names, time.monotonic() - started)
    finally:
        chain.close()  # after the hand-over to the daemon: our descriptors only


def _ignore(amount: int) -> None:
    pass


def add_guest_path_command(sub: argparse._SubParsersAction, name: str, *, help: str,
                           description: str, flag: tuple[str, str], flag_help: str,
                           run: Callable[[argparse.Namespace], int]) -> None:
    """The command `name IMAGE GUESTPATH` with one switch (`flag`: its short and long
    forms) and the options of every guest write (rm, mkdir)."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.add_argument("image")
    parser.add_argument("guestpath")
    parser.add_argument(*flag, action="store_true", help=flag_help)
    add_write_options(parser, FORCE_BASE)
    parser.set_defaults(func=run)


def written_where(plan: Plan) -> str:
    """The guest path a write changed and its volume, as the report's text names them."""
    return f"{escape(guest(plan.path), backslash=False)} on {escape(plan.target.description)}"


def report_written(args: argparse.Namespace, done: Written, text: str, fields: dict) -> None:
    """The report of a guest write: `text`, or with --json what every guest write says,
    the command's own `fields`, and the time it took."""
    report(args, {**common_result(args, done), **fields, "seconds": round(done.seconds, 3)}, text)


def guest(path: tuple[str, ...]) -> str:
    """A guest path for --json (exact)."""
    return "/" + "/".join(path)


def common_result(args: argparse.Namespace, done: Written) -> dict:
    return {"image": args.image, "chain": done.chain, "volume": done.plan.target.number,
            "file_system": done.plan.target.fs_type, "path": guest(done.plan.path)}
