"""Commit a differencing VHDX child (.avhdx) into its immediate VHDX parent (fixed, dynamic
or differencing), with the crash safety and the restart of the VHD commit
(vhdfs.maintain.commit): copying is idempotent, the child's data is never written, the
parent is written through `VhdxLayer` (data in place or in new blocks, BAT and sector
bitmaps through its log), and a journal and a mark say the parent is mid-commit.

What is new with VHDX is the parent's identity. A child names its parent by the parent's
DataWriteGuid, and a parent whose data changes must get a new one ([MS-VHDX] 2.2.2): its
other children then no longer match it and are refused, instead of reading changed data
under their own (what Hyper-V does to them too, and what VHD cannot tell). The child being
committed must keep reading the same, so before the parent changes its locator gets the
parent's new DataWriteGuid, chosen beforehand, as `parent_linkage2` (the second linkage the
specification gives for this); at every moment it matches the parent through one of its two
linkages. At the end its locator names the new GUID as `parent_linkage` alone (libvhdi reads
only that one). The child's DataWriteGuid does not change (its data does not), so its own
children stay valid.

The sequence (each step durable before the next; every step is skipped when a resumed
run finds it done):
  1. journal "prepared" beside the parent: the child, the parent's DataWriteGuid G and the
     new one G' -> 2. the child's locator: parent_linkage G, parent_linkage2 G' (one log
     entry) -> 3. the mark in the parent's metadata (one log entry), then its DataWriteGuid
     set to G' (a header update) -> 4. journal "copying" -> 5. the child's blocks copied,
     with a checkpoint (flush, journal's next block) every CHECKPOINT_BYTES; blocks the
     child describes as zero (zero, unmapped, undefined: they read as zeros) are written as
     zeros where the parent holds anything else -> 6. final flush, the mark removed, the
     log emptied (a clean close) -> 7. journal "copied", then the child's locator:
     parent_linkage G' alone (skipped with --delete-child) -> 8. journal deleted -> 9. child
     deleted if asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vhdfs.errors import RefusedError
from vhdfs.image import RunKind
from vhdfs.maintain.copier import (
    CHECKPOINT_BYTES,
    CommitJob,
    CommitResult,
    ReadAhead,
    finish_fix,
    now_iso,
    refuse_damage,
)
from vhdfs.maintain.faults import Faults, FaultySource
from vhdfs.maintain.files import (
    remove_durably,
    require_folder_writable,
    require_writable,
)
from vhdfs.maintain.findings import RANK_COMMIT, Fix
from vhdfs.maintain.journals import (
    PHASE_COPYING,
    PHASE_PREPARED,
    DamagedJournal,
    remove_journal,
    write_journal,
)
from vhdfs.maintain.journals_vhdx import (
    PHASE_COPIED,
    VhdxCommitJournal,
    VhdxMark,
    encode_mark,
    mark_of,
    read_vhdx_journal,
)
from vhdfs.maintain.scan_vhdx import scan_vhdx_file
from vhdfs.maintain.siblings import find_committing_child, read_ids
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions, find_parent
from vhdfs.sources import locks
from vhdfs.sources.local import LocalFile
from vhdfs.sources.locks import Mode
from vhdfs.vhdx import build, metadata
from vhdfs.vhdx import format as fmt
from vhdfs.vhdx.headers import Headers
from vhdfs.vhdx.journal import Journal, new_guid
from vhdfs.vhdx.layer import VhdxLayer
from vhdfs.vhdx.rules import LINKAGE_KEYS, parse_parent_locator

log = logging.getLogger("vhdfs")

# Not damage to a commit: a log left by a crash (readers replay it; the first write of the
# commit replays it into the file), whoever left it, a killed commit included.
LOG_CODES = {"log-unreplayed", "log-guid-stale"}
# What a resumed commit mends in the parent itself: its own mark.
OWN_CODES = LOG_CODES | {"mid-commit"}
ZERO_CHUNK = 4 << 20
COPIED = -1  # resume_state: everything is copied, only the child's last re-link is left
ZERO_STATES = (fmt.PAYLOAD_BLOCK_ZERO, fmt.PAYLOAD_BLOCK_UNMAPPED, fmt.PAYLOAD_BLOCK_UNDEFINED)


def _linkage(raw: bytes) -> str:
    """A DataWriteGuid as a parent locator names it: '{guid}' in lower case."""
    return "{" + fmt.guid_text(raw).lower() + "}"


def relink(child: Path, linkages: dict[str, bytes | None], faults: Faults) -> bool:
    """Set the child's parent linkages (a key mapped to None is removed), through its log in
    one entry; the path entries and any other key stay. False when nothing changes."""
    def change(meta) -> bytes | None:
        where = f"metadata region at offset {meta.region.start}"
        locator, problem = parse_parent_locator(meta.locator_raw, where)
        if problem is not None:
            raise RefusedError(f"{child}: {problem.what}; {problem.fix}")
        values = dict(locator.values)
        for key, value in linkages.items():
            if value is None:
                values.pop(key, None)
            else:
                values[key] = _linkage(value)
        if values == locator.values:
            return None
        ordered = {key: values[key] for key in LINKAGE_KEYS if key in values}
        ordered.update((key, value) for key, value in values.items() if key not in ordered)
        item = meta.item(fmt.PARENT_LOCATOR)
        return metadata.with_item(meta.raw, fmt.PARENT_LOCATOR, build.parent_locator_bytes(ordered),
                                  item.flags)
    with FaultySource(LocalFile(child, writable=True), faults) as source:
        return metadata.edit_metadata(source, change)


class _VhdxCommit(CommitJob):
    # ---------------------------------------------------------------- preparing
    def open_child(self) -> VhdxLayer:
        return self.open_child_as(LocalFile(self.child_path), VhdxLayer)

    def refuse_unfinished_commit_into_child(self, child: VhdxLayer) -> None:
        try:
            marked = read_vhdx_journal(self.child_path) is not None
        except DamagedJournal:
            marked = True
        self.refuse_if_mid_commit(marked or child.commit_mark is not None)

    def resume_state(self, parent: VhdxLayer, parent_path: Path, child: VhdxLayer
                     ) -> tuple[int | None, bytes, bytes]:
        """(the child block to resume from, or None for a new commit, or COPIED when only the
        child's last re-link is left; the parent's DataWriteGuid before the commit; the one
        the commit gives it)."""
        mark = mark_of(parent.metadata)
        try:
            journal = read_vhdx_journal(parent_path)
        except DamagedJournal:
            if mark is None or mark.child_id != child.unique_id:
                raise
            journal = None
        current = parent.unique_id
        if journal is not None:
            if journal.child_unique_id != fmt.guid_text(child.unique_id):
                self.refuse_other_child(parent_path, journal)
            before, after = journal.ids
            if current not in (before, after):
                raise RefusedError(f"{parent_path}: its commit journal names a parent with "
                                   f"DataWriteGuid {journal.parent_unique_id} (or "
                                   f"{journal.parent_new_unique_id} once written), but the file "
                                   f"has {fmt.guid_text(current)}; the journal does not belong to "
                                   "it (was the file replaced?)")
            if journal.phase == PHASE_COPIED:
                return COPIED, before, after
            return self.resume_point(journal), before, after
        if mark is not None:
            if mark.child_id != child.unique_id:
                raise RefusedError(f"{parent_path}: a commit of the child with DataWriteGuid "
                                   f"{fmt.guid_text(mark.child_id)} into it is unfinished; finish "
                                   "that first (vhdfs check --repair PARENT --search DIR finds it)")
            return 0, mark.parent_before, mark.parent_after
        return None, current, new_guid()

    def warn_siblings(self, parent_id: bytes, parent_path: Path, result: CommitResult) -> None:
        others = self.find_other_children(parent_id, parent_path, result)
        if others:
            self.warn(f"{parent_path} has other children that become invalid after this commit: "
                      "the parent gets a new DataWriteGuid, so they no longer match it (their "
                      f"data was made over the old contents): {', '.join(map(str, others))}; "
                      "delete or re-create them")
        else:
            self.warn(f"committing changes {parent_path}: it gets a new DataWriteGuid, and any "
                      "other child of it becomes invalid; none found in "
                      f"{', '.join(result.searched)} (--search DIR looks further)")

    # ---------------------------------------------------------------- the job
    def run(self, delete_child: bool) -> CommitResult:
        # Both files held alone for the whole job, as the VHD commit holds them.
        child_hold = locks.lock_path(self.child_path, Mode.EXCLUSIVE)
        parent_hold: locks.Hold | None = None
        try:
            refuse_damage(self.child_path, "child", scan_vhdx_file, LOG_CODES)
            child = self.open_child()
            try:
                self.refuse_unfinished_commit_into_child(child)
                parent, link = find_parent(child, self.options, {child.source.identity()})
                try:
                    parent_path = Path(link.path)
                    if not isinstance(parent, VhdxLayer) or not isinstance(parent.source, LocalFile):
                        raise RefusedError(f"{link.path}: commit writes only into local VHDX "
                                           "parent files")
                    parent_hold = locks.lock_fd(parent.source.fd, link.path, Mode.EXCLUSIVE)
                    result = CommitResult(str(self.child_path), str(parent_path), link.found_by)
                    require_writable(parent_path, "the parent", "commit writes the child's data "
                                     "into it; make it writable if you mean to change it")
                    require_writable(self.child_path, "the child", "commit names the parent's new "
                                     "DataWriteGuid in its parent locator (its data is not "
                                     "written); make it writable")
                    if delete_child:
                        require_folder_writable(self.child_path.parent, "--delete-child cannot "
                                                "delete the child there")
                    resume, before, after = self.resume_state(parent, parent_path, child)
                    ignore = OWN_CODES if resume is not None else LOG_CODES
                    refuse_damage(parent_path, "parent", scan_vhdx_file, ignore)
                    if child.logical_sector_size % parent.sector_size:
                        raise RefusedError(
                            f"{self.child_path}: its {child.logical_sector_size}-byte logical "
                            f"sectors cannot be written into {parent_path}, whose differencing "
                            f"writes are whole {parent.sector_size}-byte sectors")
                    result.resumed_at = child.block_count if resume == COPIED else resume
                    self.warn_siblings(before, parent_path, result)
                finally:
                    parent.close()
                child_id, blocks = child.unique_id, child.block_count
            finally:
                child.close()
            journal = self.copy(parent_path, child_id, blocks, resume, before, after, result)
            if delete_child:  # still held: nobody opened it meanwhile
                remove_journal(parent_path, self.faults)
                remove_durably(self.child_path, self.faults)
                result.child_deleted = True
            else:
                # 7. said first: the parent holds all of the child, only the re-link is left
                write_journal(parent_path, replace(journal, phase=PHASE_COPIED, next_block=blocks),
                              self.faults)
                relink(self.child_path, {"parent_linkage": after, "parent_linkage2": None},
                       self.faults)
                remove_journal(parent_path, self.faults)
        finally:
            child_hold.release()
            if parent_hold is not None:
                parent_hold.release()
        return result

    def copy(self, parent_path: Path, child_id: bytes, blocks: int, resume: int | None,
             before: bytes, after: bytes, result: CommitResult) -> VhdxCommitJournal:
        """Steps 1-6; the journal as it was last written."""
        first = resume or 0
        journal = VhdxCommitJournal(
            parent=parent_path.name, parent_unique_id=fmt.guid_text(before),
            parent_new_unique_id=fmt.guid_text(after), child=str(self.child_path.resolve()),
            child_unique_id=fmt.guid_text(child_id), phase=PHASE_PREPARED, next_block=first,
            blocks=blocks, started=now_iso(), child_mtime_ns=self.child_path.stat().st_mtime_ns)
        if resume == COPIED:
            return replace(journal, phase=PHASE_COPIED, next_block=blocks)
        if resume is None:
            write_journal(parent_path, journal, self.faults)
        # 2. the child matches the parent before and after its DataWriteGuid changes
        if after not in self.child_linkages():
            relink(self.child_path, {"parent_linkage": before, "parent_linkage2": after},
                   self.faults)
        # 3. the mark, then the new DataWriteGuid
        parent_file = LocalFile(parent_path, writable=True)
        source = FaultySource(parent_file, self.faults)
        try:
            parent = VhdxLayer(source, writable=True)
        except BaseException:
            source.close()
            raise
        try:
            mark = encode_mark(VhdxMark(child_id, before, after))
            found = parent.metadata.item(fmt.COMMIT_MARK_ITEM)
            if found is None or found.value != mark:
                parent.write_metadata(metadata.with_item(parent.metadata.raw, fmt.COMMIT_MARK_ITEM,
                                                         mark, fmt.META_IS_USER))
            assert parent.journal is not None
            parent.journal.begin_data(after)
            # 4.
            journal = replace(journal, phase=PHASE_COPYING,
                              child_mtime_ns=self.child_path.stat().st_mtime_ns)
            write_journal(parent_path, journal, self.faults)
            # 5., 6.
            self.copy_blocks(parent, parent_file, first, parent_path, journal, result)
            parent.write_metadata(metadata.with_item(parent.metadata.raw, fmt.COMMIT_MARK_ITEM,
                                                     None))
        except BaseException:
            source.close()  # what is not flushed is in the log or not needed: a rerun finishes
            raise
        parent.close()  # the log emptied: a clean file
        return journal

    def child_linkages(self) -> tuple[bytes, ...]:
        with LocalFile(self.child_path) as source, VhdxLayer(source) as child:
            return child.parent_ids

    def copy_blocks(self, parent: VhdxLayer, parent_file: LocalFile, first: int,
                    parent_path: Path, journal: VhdxCommitJournal, result: CommitResult) -> None:
        with LocalFile(self.child_path) as child_source:
            child = VhdxLayer(child_source)
            states = [child.block_state(b) for b in range(child.block_count)]
            here = [b for b in range(first, child.block_count)
                    if states[b] >= fmt.PAYLOAD_BLOCK_FULLY_PRESENT]
            zeros = {b for b in range(first, child.block_count) if states[b] in ZERO_STATES}
            total = sum(run.length for b in here for run in child.block_runs(b)
                        if run.kind is RunKind.HERE)
            progress = Progress(f"commit {self.child_path.name}", total, quiet=self.quiet)

            def end_of_block(block: int) -> int:
                return self.write_zeros(parent, child, block) if block in zeros else 0

            def checkpoint(next_block: int) -> None:
                journal.next_block = next_block
                write_journal(parent_path, journal, self.faults, checkpoint=True)
            self.copy_pieces(parent, ReadAhead(child, sorted(set(here) | zeros)), parent_file.fd,
                             progress, result, checkpoint, end_of_block)

    @staticmethod
    def write_zeros(parent: VhdxLayer, child: VhdxLayer, block: int) -> int:
        """A block the child describes as zeros: zeros into the parent, unless it reads as
        zeros there already. Returns the bytes written."""
        start = block * child.block_size
        length = min(child.block_size, child.size - start)
        written = 0
        for run in parent.map(start, length):
            if run.kind is RunKind.ZERO:
                continue
            zeros = bytes(min(ZERO_CHUNK, run.length))
            for at in range(run.offset, run.offset + run.length, ZERO_CHUNK):
                count = min(ZERO_CHUNK, run.offset + run.length - at)
                parent.write(at, zeros[:count])
                written += count
        return written


def commit_vhdx(child: str, options: OpenOptions | None = None, *, delete_child: bool = False,
                faults: Faults | None = None, quiet: bool = False,
                warn: Callable[[str], None] | None = None,
                checkpoint_bytes: int = CHECKPOINT_BYTES) -> CommitResult:
    """Merge the .avhdx `child` into its VHDX parent (see the module text). Restartable
    after any crash: run it again, or vhdfs check --repair PARENT."""
    job = _VhdxCommit(child, options or OpenOptions(), faults or Faults.from_env(), quiet,
                      warn or log.warning, checkpoint_bytes)
    return job.run(delete_child)


# ---------------------------------------------------------------- vhdfs check --repair
def unfinished_commit_fix(parent: str, state: dict, search: list[str]) -> Fix | None:
    """The repair of an unfinished commit into the VHDX file `parent` (`state`:
    journals_vhdx.commit_state): roll it back when nothing was copied yet (the mark removed,
    the old DataWriteGuid back, the journal deleted), else finish it; None when the child is
    not found (check then names the command that finishes it)."""
    before = state.get("parent_unique_id")
    if state.get("phase") == PHASE_PREPARED:
        def rollback(source: FaultySource) -> None:
            metadata.edit_metadata(source, lambda meta: metadata.with_item(
                meta.raw, fmt.COMMIT_MARK_ITEM, None) if meta.item(fmt.COMMIT_MARK_ITEM) else None)
            headers = Headers.read(source, lambda text: None)
            if before and bytes(headers.current.data_write_guid) != fmt.guid(before):
                journal = Journal(source, headers)
                journal.begin_data(fmt.guid(before))  # nothing was written since it was current
                journal.close()
            remove_journal(parent, source.faults)
        return Fix(RANK_COMMIT, "roll back the commit, which had not copied anything yet: remove "
                   "the mark, give the parent back its DataWriteGuid, delete the journal", rollback)
    parent_ids = [fmt.guid(state[key]) for key in ("parent_unique_id", "parent_new_unique_id")
                  if state.get(key)]
    child = find_committing_child(parent, state, search, parent_ids, _child_id_text)
    return finish_fix(child, parent, commit_vhdx, "remove")


def _child_id_text(path: Path) -> str | None:
    ids = read_ids(path)
    return fmt.guid_text(ids[0]) if ids is not None else None
