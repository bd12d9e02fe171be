"""The records of an unfinished commit into a VHDX parent (vhdfs.maintain.commit_vhdx).

As for VHD (vhdfs.maintain.journals), two records say a parent is mid-commit:

- the journal `PARENT.vhdfs-commit` beside it (JSON, the same file name and format as a VHD
  commit's, with `image_format` "vhdx" and the parent's DataWriteGuids before and after: the
  commit gives the parent a new one, chosen before anything is written, so a resumed run
  keeps it);
- a mark inside the parent, for when the file travels without its journal: a user metadata
  item of vhdfs's own (format.COMMIT_MARK_ITEM; not required, so qemu, libvhdi and Hyper-V
  skip it, as the specification asks of items a reader does not know) holding the child's
  DataWriteGuid and the parent's old and new ones. It is written through the parent's log
  before the first byte of the child and removed after the last one is durable.

The parent's new DataWriteGuid is a mark of its own: from its first write on, no child made
on the parent matches it any more, except the one being committed, whose locator names the
new GUID as `parent_linkage2` first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vhdfs.maintain.journals import (
    COMMIT_JOURNAL_FORMAT,
    PHASE_COPYING,
    PHASE_PREPARED,
    journal_or_problem,
    load_commit_journal,
    state_of,
)
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.rules import Metadata

IMAGE_FORMAT = "vhdx"
# After "prepared" and "copying" (vhdfs.maintain.journals): the parent holds all of the
# child and is clean; only the child's last re-link is left.
PHASE_COPIED = "copied"


@dataclass(frozen=True)
class VhdxMark:
    child_id: bytes  # the child's DataWriteGuid
    parent_before: bytes  # the parent's DataWriteGuid when the commit began
    parent_after: bytes  # the one the commit gives it


def encode_mark(mark: VhdxMark) -> bytes:
    """The value of the mark item (format.COMMIT_MARK_ITEM, laid out as format.COMMIT_MARK)."""
    return fmt.COMMIT_MARK.build(dict(child_id=mark.child_id, parent_before=mark.parent_before,
                                      parent_after=mark.parent_after))


def mark_of(meta: Metadata) -> VhdxMark | None:
    """The mark of an unfinished commit into this file, if its metadata holds one."""
    found = meta.commit_mark
    if found is None:
        return None
    return VhdxMark(bytes(found.child_id), bytes(found.parent_before), bytes(found.parent_after))


def guid_text(raw: bytes) -> str:
    return fmt.guid_text(raw)


@dataclass
class VhdxCommitJournal:
    parent: str  # the parent's file name when the commit started
    parent_unique_id: str  # its DataWriteGuid then
    parent_new_unique_id: str  # the DataWriteGuid the commit gives it
    child: str  # absolute path of the child
    child_unique_id: str  # the child's DataWriteGuid (a commit does not change it)
    phase: str
    next_block: int  # child blocks before this one are durable in the parent
    blocks: int
    started: str
    child_mtime_ns: int = 0  # once the child is linked to the new GUID (see commit_vhdx)

    def dump(self) -> bytes:
        return json.dumps({"format": COMMIT_JOURNAL_FORMAT, "version": 1,
                           "image_format": IMAGE_FORMAT, **asdict(self)}, indent=1).encode() + b"\n"

    @property
    def ids(self) -> tuple[bytes, bytes]:
        return fmt.guid(self.parent_unique_id), fmt.guid(self.parent_new_unique_id)


def read_vhdx_journal(parent: str | Path) -> VhdxCommitJournal | None:
    return load_commit_journal(parent, VhdxCommitJournal,
                               (PHASE_PREPARED, PHASE_COPYING, PHASE_COPIED),
                               image_format=IMAGE_FORMAT, validate=lambda j: j.ids)  # GUIDs parse


def commit_state(path: str, marked: Metadata | bytes | None) -> dict | None:
    """What `vhdfs info` and `vhdfs check` say about an unfinished commit into the VHDX file
    `path` (the same keys as vhdfs.maintain.journals.commit_state, and `image_format`), from
    its metadata or from the child's DataWriteGuid its mark names (`ImageLayer.commit_mark`)."""
    if isinstance(marked, Metadata):
        mark = mark_of(marked)
    else:
        mark = VhdxMark(marked, b"", b"") if marked else None
    journal, damaged = journal_or_problem(read_vhdx_journal, path)
    if mark is None and journal is None and not damaged:
        return None
    ids = {}
    if journal is not None:
        ids = dict(parent_unique_id=journal.parent_unique_id,
                   parent_new_unique_id=journal.parent_new_unique_id)
    elif mark is not None and mark.parent_before:
        ids = dict(parent_unique_id=guid_text(mark.parent_before),
                   parent_new_unique_id=guid_text(mark.parent_after))
    return state_of(path, journal, damaged, guid_text(mark.child_id) if mark else None,
                    id_name="DataWriteGuid", head={"image_format": IMAGE_FORMAT}, ids=ids)
