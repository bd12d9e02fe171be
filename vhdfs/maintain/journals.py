"""The records of unfinished jobs: what lets a killed commit, set-parent or repair be finished.

Each job that cannot change a file in one write first writes a journal beside it (JSON,
write-then-rename, synced) and deletes it once its last write is durable:

  <parent>.vhdfs-commit     commit: which child (path and unique id), the parent's unique id,
                            the phase and the first child block not yet known to be durable
                            in the parent. It lets `vhdfs commit` resume and `vhdfs check
                            --repair` finish the job.
  <child>.vhdfs-setparent   set-parent: the old and the new dynamic header, so a torn header
                            write (one sector new, one old) is finished by check --repair.
  <image>.vhdfs-repair      check --repair: the BAT entries it set out to drop, and the values
                            they held, so a crash between two BAT sectors is finished.

A commit also marks the parent itself, so a parent copied or uploaded without its journal
still says so: the last 32 bytes of the footer's reserved area (footer bytes 480-511) hold
`vhdfs-commit`, a version and the child's unique id. The checksum covers them, so the footer
stays valid; qemu, libvhdi and Windows ignore the reserved area (tapdisk's flag lives at byte
85, far from it). When those bytes are not zero to begin with, they belong to someone else
and only the journal is used. Both commit marks are set before the first byte of the child
is written into the parent and cleared after the last one is durable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vhdfs.errors import ImageIOError
from vhdfs.maintain.faults import Faults
from vhdfs.maintain.files import remove_durably, write_atomic
from vhdfs.sources.base import Source
from vhdfs.vhd.dynheader import HEADER_SIZE
from vhdfs.vhd.footer import (
    FOOTER_SIZE,
    MARK_LENGTH,
    MARK_SLICE,
    MARKER_MAGIC,
    MARKER_VERSION,
    DiskType,
    Footer,
    format_unique_id,
)

COMMIT_JOURNAL_SUFFIX = ".vhdfs-commit"
COMMIT_JOURNAL_FORMAT = "vhdfs-commit-journal"
SETPARENT_JOURNAL_SUFFIX = ".vhdfs-setparent"
SETPARENT_JOURNAL_FORMAT = "vhdfs-set-parent-journal"
REPAIR_JOURNAL_SUFFIX = ".vhdfs-repair"
REPAIR_JOURNAL_FORMAT = "vhdfs-repair-journal"

PHASE_PREPARED = "prepared"  # marks set, nothing written into the parent yet
PHASE_COPYING = "copying"  # the parent may hold any part of the child's data

J = TypeVar("J", bound=Any)  # a commit journal's record


# ---------------------------------------------------------------- commit
def journal_path(parent: str | Path) -> Path:
    """The commit journal of a commit into `parent`."""
    path = Path(parent)
    return path.with_name(path.name + COMMIT_JOURNAL_SUFFIX)


@dataclass
class CommitJournal:
    parent: str  # the parent's file name when the commit started
    parent_unique_id: str
    child: str  # absolute path of the child
    child_unique_id: str
    phase: str
    next_block: int  # child blocks before this one are durable in the parent
    blocks: int
    started: str
    # The child's modification time when the commit started: if it changed, its data may
    # have too, and a resumed commit starts over (copying again is always correct).
    child_mtime_ns: int = 0

    def dump(self) -> bytes:
        return json.dumps({"format": COMMIT_JOURNAL_FORMAT, "version": 1, **asdict(self)},
                          indent=1).encode() + b"\n"


class DamagedJournal(ImageIOError):
    pass


def load_commit_journal(parent: str | Path, record: type[J], phases: tuple[str, ...], *,
                        image_format: str | None = None,
                        validate: Callable[[J], object] | None = None) -> J | None:
    """The commit journal beside `parent` as a `record` (a dataclass of its fields), or None
    when there is none; DamagedJournal when it cannot be read, is not a commit journal (of
    `image_format`, when given), has a phase not in `phases` or fails `validate`."""
    path = journal_path(parent)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedJournal(f"{path}: cannot read the commit journal: {exc.strerror}") from None
    try:
        data = json.loads(text)
        if data.get("format") != COMMIT_JOURNAL_FORMAT:
            raise ValueError(_not_a_journal(image_format))
        if image_format is not None and data.get("image_format") != image_format:
            raise ValueError(_not_a_journal(image_format))
        names = {f.name for f in dataclass_fields(record)}
        journal = record(**{k: data[k] for k in names if k in data})
        if not isinstance(journal.next_block, int) or journal.phase not in phases:
            raise ValueError("bad phase or block number")
        if validate is not None:
            validate(journal)
        return journal
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedJournal(f"{path}: the commit journal is damaged ({exc}); the commit it "
                             "recorded is unfinished: run vhdfs commit CHILD again") from None


def _not_a_journal(image_format: str | None) -> str:
    if image_format is None:
        return "not a vhdfs commit journal"
    return f"not a vhdfs commit journal of a {image_format.upper()} parent"


def read_journal(parent: str | Path) -> CommitJournal | None:
    return load_commit_journal(parent, CommitJournal, (PHASE_PREPARED, PHASE_COPYING))


class JournalRecord(Protocol):
    """A commit journal of either format (CommitJournal, journals_vhdx.VhdxCommitJournal)."""

    def dump(self) -> bytes: ...


def write_journal(parent: str | Path, journal: JournalRecord, faults: Faults, *,
                  checkpoint: bool = False) -> None:
    """A checkpoint only moves the resume point forward: losing it to a power cut costs some
    copying again, never correctness, so it skips the folder sync."""
    write_atomic(journal_path(parent), journal.dump(), faults, sync_folder_after=not checkpoint)


def remove_journal(parent: str | Path, faults: Faults) -> None:
    remove_durably(journal_path(parent), faults)


# ---------------------------------------------------------------- set-parent
def setparent_journal_of(child: str | Path) -> Path:
    """The journal of a set-parent of `child`."""
    path = Path(child)
    return path.with_name(path.name + SETPARENT_JOURNAL_SUFFIX)


@dataclass
class PendingHeader:
    header_offset: int
    old_header: bytes
    new_header: bytes


def write_setparent_journal(child: Path, pending: PendingHeader, faults: Faults) -> None:
    journal = {"format": SETPARENT_JOURNAL_FORMAT, "version": 1,
               "header_offset": pending.header_offset, "old_header": pending.old_header.hex(),
               "new_header": pending.new_header.hex()}
    write_atomic(setparent_journal_of(child), json.dumps(journal).encode() + b"\n", faults)


def pending_header(child: Path) -> PendingHeader | None:
    """The header an interrupted set-parent was about to write, if its journal is there."""
    try:
        data = json.loads(setparent_journal_of(child).read_text())
        if data.get("format") != SETPARENT_JOURNAL_FORMAT:
            return None
        pending = PendingHeader(int(data["header_offset"]), bytes.fromhex(data["old_header"]),
                                bytes.fromhex(data["new_header"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(pending.new_header) != HEADER_SIZE or len(pending.old_header) != HEADER_SIZE:
        return None
    return pending


# ---------------------------------------------------------------- check --repair
def repair_journal_of(image: str | Path) -> Path:
    """The journal of BAT entries a repair of `image` drops."""
    path = Path(image)
    return path.with_name(path.name + REPAIR_JOURNAL_SUFFIX)


def write_repair_journal(image: str | Path, bat_at: int, entries: dict[int, int],
                         faults: Faults) -> None:
    record = {"format": REPAIR_JOURNAL_FORMAT, "version": 1, "bat_offset": bat_at,
              "drop": {str(k): v for k, v in entries.items()}}
    write_atomic(repair_journal_of(image), json.dumps(record).encode() + b"\n", faults)


def read_repair_journal(image: str | Path) -> tuple[int, dict[int, int]] | None:
    """(BAT offset, {entry: value it had}) of BAT drops a killed repair had begun."""
    try:
        data = json.loads(repair_journal_of(image).read_text())
        if data.get("format") != REPAIR_JOURNAL_FORMAT:
            return None
        return int(data["bat_offset"]), {int(k): int(v) for k, v in data["drop"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------- the commit mark in the footer
# Its place and layout are the footer's (vhdfs.vhd.footer: MARK_SLICE, Footer.commit_mark).
def mark_area(footer: Footer) -> bytes:
    return bytes(footer.reserved[MARK_SLICE])


def reserved_outside_mark(footer: Footer) -> bytes:
    reserved = bytearray(footer.reserved)
    del reserved[MARK_SLICE]
    return bytes(reserved)


def _with_area(footer: Footer, area: bytes) -> Footer:
    reserved = bytearray(footer.reserved)
    reserved[MARK_SLICE] = area
    return footer.copy(reserved=bytes(reserved))


def marker_child_id(footer: Footer) -> bytes | None:
    """The unique id of the child whose commit into this file is unfinished, if marked."""
    return footer.commit_mark


def marker_area_free(footer: Footer) -> bool:
    return mark_area(footer) == bytes(MARK_LENGTH) or marker_child_id(footer) is not None


def with_marker(footer: Footer, child_id: bytes) -> Footer:
    return _with_area(footer, MARKER_MAGIC + MARKER_VERSION + child_id)


def without_marker(footer: Footer) -> Footer:
    if marker_child_id(footer) is None:
        return footer
    return _with_area(footer, bytes(MARK_LENGTH))


def write_footers(source: Source, footer: Footer, faults: Faults) -> None:
    """Write `footer` at the end of the file, then (dynamic and differencing disks) its copy
    at offset 0, then sync. A crash in between leaves two valid footers that differ only in
    the mark; `vhdfs commit` and `vhdfs check --repair` make them agree again."""
    raw = footer.build()
    end = source.size() - FOOTER_SIZE
    faults.point("write trailing footer")
    source.write_at(end, raw)
    if footer.disk_type != DiskType.FIXED:
        faults.point("write footer copy")
        source.write_at(0, raw)
    faults.point("sync footers")
    source.sync()


def commit_state(path: str, marked: bytes | None) -> dict | None:
    """What `vhdfs info` and `vhdfs check` say about an unfinished commit into `path`, whose
    footer marks the commit of child `marked` (see `ImageLayer.commit_mark`), or not."""
    journal, damaged = journal_or_problem(read_journal, path)
    if marked is None and journal is None and not damaged:
        return None
    return state_of(path, journal, damaged, format_unique_id(marked) if marked else None)


def journal_or_problem(read: Callable[[str], J | None], path: str) -> tuple[J | None, str]:
    """(the commit journal beside `path` or None, what is wrong with it or "")."""
    try:
        return read(path), ""
    except DamagedJournal as exc:
        return None, str(exc)


def state_of(path: str, journal: Any, damaged: str, marked_child: str | None, *,
             id_name: str = "unique id", head: dict | None = None,
             ids: dict | None = None) -> dict:
    """The state of an unfinished commit into `path` (commit_state's keys) from its journal,
    else from the id of the child its mark names (`marked_child`, `id_name` says what id):
    `head` goes after the journal's path, `ids` (the parent's) before how to finish it."""
    state: dict = {"journal": str(journal_path(path)) if (journal or damaged) else None,
                   **(head or {})}
    if journal is not None:
        state.update(child=journal.child, child_unique_id=journal.child_unique_id,
                     phase=journal.phase, next_block=journal.next_block, blocks=journal.blocks,
                     **(ids or {}))
        state["finish"] = f"vhdfs commit {journal.child}"
    else:
        state.update(child=None, child_unique_id=marked_child, **(ids or {}))
        state["finish"] = (f"vhdfs commit CHILD (the child with {id_name} "
                           f"{state['child_unique_id']}), or vhdfs check --repair "
                           f"{path} --search DIR to find it")
    if damaged:
        state["journal_problem"] = damaged
    return state


def describe_state(path: str, state: dict) -> str:
    who = state.get("child") or f"a child with unique id {state.get('child_unique_id')}"
    text = f"{path}: a commit of {who} into it is unfinished"
    if state.get("phase") == PHASE_PREPARED:
        text += " (nothing was written yet)"
    return f"{text}; its data is a mix of old and new until it is finished: run {state['finish']}"
