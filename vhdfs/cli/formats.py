"""Which container a new file gets (VHD or VHDX), from its name and --format / --to.

A name ending in .vhd or .avhd means VHD, .vhdx or .avhdx means VHDX (as Hyper-V, qemu-img and
Windows take them); other names are VHD unless --format says otherwise. When the name and the
options disagree the command is refused: a VHD under a .vhdx name (or the reverse) is what
other tools then misread.
"""

from __future__ import annotations

from pathlib import Path

from vhdfs.errors import UsageError
from vhdfs.quoting import escape

FORMATS = ("vhd", "vhdx")
SUFFIX_FORMATS = {".vhd": "vhd", ".avhd": "vhd", ".vhdx": "vhdx", ".avhdx": "vhdx"}


def suffix_format(out: str) -> str | None:
    return SUFFIX_FORMATS.get(Path(out).suffix.lower())


def container_format(out: str, chosen: str | None, what: str = "--format") -> str:
    """'vhd' or 'vhdx' for a new file `out`: `chosen` (an option's value) or its suffix."""
    named = suffix_format(out)
    if chosen is not None and named is not None and chosen != named:
        shown = escape(out, backslash=False)
        stem = Path(out).with_suffix("").name
        drop = f" or drop {what}" if what == "--format" else ""
        raise UsageError(f"{shown}: the name says {named.upper()} but {what} says "
                         f"{chosen.upper()}; name it {escape(stem, backslash=False)}.{chosen}"
                         f"{drop}")
    return chosen or named or "vhd"


def convert_target(out: str, to: str, chosen: str | None, fixed: bool) -> tuple[str, bool]:
    """The library's (to, fixed) for `convert --to TO [--format F] [--fixed] OUT`.

    --to vhdx [--fixed] is a dynamic (fixed) VHDX; --to fixed|dynamic make a VHD or, when
    the name or --format say VHDX, a VHDX of that kind; --to raw never goes into a
    .vhd/.vhdx name."""
    if to == "raw":
        if chosen is not None or fixed:
            raise UsageError("--format and --fixed are for VHD/VHDX output, not --to raw")
        if suffix_format(out) is not None:
            raise UsageError(f"{escape(out, backslash=False)}: the name says "
                             f"{suffix_format(out).upper()} but --to raw writes a raw image; "
                             "choose a name like disk.raw or disk.img")
        return "raw", False
    if to == "vhdx":
        container = container_format(out, "vhdx" if chosen is None else chosen, "--to vhdx")
        if container != "vhdx":
            raise UsageError("--to vhdx with --format vhd: choose one (--to fixed|dynamic "
                             "--format vhd for a VHD)")
        return "vhdx", fixed
    container = container_format(out, chosen)
    if fixed and to == "dynamic":
        raise UsageError("--to dynamic and --fixed contradict each other")
    if container == "vhdx":
        return "vhdx", fixed or to == "fixed"
    if fixed:
        raise UsageError("--fixed is for VHDX output (--to vhdx --fixed); a fixed VHD is "
                         "--to fixed")
    return to, False
