"""Commit a differencing child into its immediate parent.

Only the sector runs the child's bitmaps mark are copied (the child's HERE runs), so the
work grows with the child's data, not with the disk. The data goes through the parent's
`Layer` opened writable, which allocates blocks and sets bitmap bits in a dynamic or
differencing parent, and orders data before metadata on every flush.

Crash safety rests on two facts:
- copying is idempotent: writing the child's sectors into the parent twice gives the same
  parent, so a killed commit is finished by running it again from any earlier point;
- the child is never written, and is deleted (`--delete-child`) only after the parent holds
  all of its data durably. Through the child, the chain reads the same at every moment.

While the parent holds part of the child, it carries the marks of vhdfs.maintain.journals (a
journal next to it and a mark in its footer); `vhdfs info` and `vhdfs check` report them.

The sequence (each step durable before the next):
  1. journal "prepared" (new commit) -> 2. mark in the parent's footers -> 3. unused space
  after the last block trimmed (left by a killed run's allocations, so the resumed result is
  byte-identical to an uninterrupted one) -> 4. journal "copying" -> 5. copy blocks, with a
  checkpoint (flush, journal's next block) every CHECKPOINT_BYTES -> 6. final flush ->
  7. mark cleared -> 8. journal deleted -> 9. child deleted if asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from vhdfs.errors import RefusedError
from vhdfs.image import SECTOR
from vhdfs.maintain.commit_vhdx import commit_vhdx
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
from vhdfs.maintain.files import remove_durably, require_folder_writable, require_writable
from vhdfs.maintain.findings import ERROR, RANK_COMMIT, FileScan, Fix
from vhdfs.maintain.journals import (
    PHASE_COPYING,
    PHASE_PREPARED,
    CommitJournal,
    DamagedJournal,
    marker_area_free,
    marker_child_id,
    read_journal,
    remove_journal,
    with_marker,
    without_marker,
    write_footers,
    write_journal,
)
from vhdfs.maintain.repairs import clear_commit_mark
from vhdfs.maintain.scan import scan_file
from vhdfs.maintain.scan_vhdx import is_vhdx_path
from vhdfs.maintain.siblings import find_committing_child, unique_id_of
from vhdfs.progress import Progress
from vhdfs.resolve import OpenOptions, find_parent
from vhdfs.sources import locks
from vhdfs.sources.base import Source
from vhdfs.sources.local import LocalFile
from vhdfs.sources.locks import Mode
from vhdfs.vhd.footer import FOOTER_SIZE, DiskType, Footer, format_unique_id
from vhdfs.vhd.layer import UNALLOCATED, Layer

log = logging.getLogger("vhdfs")

# Problems of the parent a resumed commit mends itself: its own marks, half written.
OWN_MARK_CODES = {"mid-commit", "footer-copy-mark"}


class _Commit(CommitJob):
    # ---------------------------------------------------------------- preparing
    def scan(self, source: Source) -> FileScan:
        return scan_file(source, size_rule=self.options.size_rule)

    def open_child(self) -> Layer:
        # Held alone for the whole job: nothing may write it, nor delete it under a reader.
        return self.open_child_as(LocalFile(self.child_path, lock=Mode.EXCLUSIVE),
                                  lambda source: Layer(source, size_rule=self.options.size_rule))

    def refuse_unfinished_commit_into_child(self, child: Layer) -> None:
        try:
            journal = read_journal(self.child_path)
        except DamagedJournal:
            journal = None
            marked = True
        else:
            marked = journal is not None or marker_child_id(child.footer) is not None
        self.refuse_if_mid_commit(marked)

    def journal_state(self, parent: Layer, parent_path: Path, child: Layer) -> int | None:
        """The child block to resume from, or None for a new commit."""
        try:
            journal = read_journal(parent_path)
        except DamagedJournal:
            journal = None
            if marker_child_id(parent.footer) != child.unique_id:
                raise
        marked = marker_child_id(parent.footer)
        if journal is not None:
            if journal.child_unique_id != format_unique_id(child.unique_id):
                self.refuse_other_child(parent_path, journal)
            if journal.parent_unique_id != format_unique_id(parent.unique_id):
                raise RefusedError(f"{parent_path}: its commit journal names a parent with unique id "
                                   f"{journal.parent_unique_id}, but the file has "
                                   f"{format_unique_id(parent.unique_id)}; the journal does not "
                                   "belong to it (was the file replaced?)")
            return self.resume_point(journal)
        if marked is not None:
            if marked != child.unique_id:
                raise RefusedError(f"{parent_path}: a commit of the child with unique id "
                                   f"{format_unique_id(marked)} into it is unfinished; finish that "
                                   "first (vhdfs check --repair PARENT --search DIR finds it)")
            return 0
        return None

    def warn_siblings(self, parent: Layer, parent_path: Path, result: CommitResult) -> None:
        others = self.find_other_children(parent.unique_id, parent_path, result)
        if others:
            self.warn(f"{parent_path} has other children that become invalid after this commit "
                      f"(they would read changed data under their own): "
                      f"{', '.join(map(str, others))}; delete or re-create them")
        else:
            self.warn(f"committing changes {parent_path}: any other child of it becomes invalid; "
                      f"none found in {', '.join(result.searched)} (--search DIR looks further)")

    # ---------------------------------------------------------------- the job
    def run(self, delete_child: bool) -> CommitResult:
        child = self.open_child()
        parent_hold: locks.Hold | None = None
        try:
            refuse_damage(self.child_path, "child", self.scan)
            self.refuse_unfinished_commit_into_child(child)
            parent, link = find_parent(child, self.options, {child.source.identity()})
            try:
                parent_path = Path(link.path)
                if not isinstance(parent.source, LocalFile) or type(parent) is not Layer:
                    raise RefusedError(f"{link.path}: commit writes only into local VHD parent files")
                # Held alone from before its journal is read to the end: no reader sees it
                # half written, and no mount, commit or repair writes it at the same time.
                parent_hold = locks.lock_fd(parent.source.fd, link.path, Mode.EXCLUSIVE)
                result = CommitResult(str(self.child_path), str(parent_path), link.found_by)
                require_writable(parent_path, "the parent", "commit writes the child's data into "
                                 "it; make it writable if you mean to change it")
                if delete_child:
                    require_folder_writable(self.child_path.parent, "--delete-child cannot delete "
                                            "the child there")
                resume = self.journal_state(parent, parent_path, child)
                ignore = OWN_MARK_CODES if resume is not None else set()
                refuse_damage(parent_path, "parent", self.scan, ignore)
                result.resumed_at = resume
                self.warn_siblings(parent, parent_path, result)
                parent_id = parent.unique_id
            finally:
                parent.close()
            self.copy(child, parent_path, parent_id, resume, result)
            if delete_child:  # still held: nobody opened it meanwhile
                remove_durably(self.child_path, self.faults)
                result.child_deleted = True
        finally:
            child.close()
            if parent_hold is not None:
                parent_hold.release()
        return result

    def copy(self, child: Layer, parent_path: Path, parent_id: bytes, resume: int | None,
             result: CommitResult) -> None:
        first = resume or 0
        journal = CommitJournal(
            parent=parent_path.name, parent_unique_id=format_unique_id(parent_id),
            child=str(self.child_path.resolve()), child_unique_id=format_unique_id(child.unique_id),
            phase=PHASE_PREPARED, next_block=first, blocks=child.block_count, started=now_iso(),
            child_mtime_ns=self.child_path.stat().st_mtime_ns)
        if resume is None:
            write_journal(parent_path, journal, self.faults)
        parent_file = LocalFile(parent_path, writable=True)
        source = FaultySource(parent_file, self.faults)
        try:
            self.mark(source, child.unique_id)
            self.trim_unused_tail(source)
        except BaseException:
            source.close()
            raise
        journal.phase = PHASE_COPYING
        write_journal(parent_path, journal, self.faults)

        total = self.bytes_to_copy(child, first)
        progress = Progress(f"commit {self.child_path.name}", total, quiet=self.quiet)
        parent = Layer(source, size_rule=self.options.size_rule, writable=True)
        blocks = [i for i in range(first, child.block_count) if child.bat[i] != UNALLOCATED]

        def checkpoint(next_block: int) -> None:
            journal.next_block = next_block
            write_journal(parent_path, journal, self.faults, checkpoint=True)
        try:
            self.copy_pieces(parent, ReadAhead(child, blocks), parent_file.fd, progress, result,
                             checkpoint)
        finally:
            parent.source.close()
        with FaultySource(LocalFile(parent_path, writable=True), self.faults) as source:
            end = source.size() - FOOTER_SIZE
            footer = Footer.parse(source.read_at(end, FOOTER_SIZE), source.name, end)
            if marker_child_id(footer) is not None:
                write_footers(source, without_marker(footer), self.faults)
        remove_journal(parent_path, self.faults)

    def mark(self, source: FaultySource, child_id: bytes) -> None:
        """Put the mark into both footers (a resumed run also mends a half-written mark)."""
        end = source.size() - FOOTER_SIZE
        footer = Footer.parse(source.read_at(end, FOOTER_SIZE), source.name, end)
        if not marker_area_free(footer):
            log.info("%s: footer bytes 480-511 are in use; only the journal marks the commit",
                     source.name)
            return
        marked = with_marker(footer, child_id)
        if footer.disk_type != DiskType.FIXED:
            same_copy = source.read_at(0, FOOTER_SIZE) == marked.build()
            if marker_child_id(footer) == child_id and same_copy:
                return
        elif marker_child_id(footer) == child_id:
            return
        write_footers(source, marked, self.faults)

    def trim_unused_tail(self, source: FaultySource) -> None:
        """Give back the space after the last block (allocations a killed run never
        recorded): the footer moves down over it, then the file is cut after the footer."""
        scan = scan_file(source.inner, size_rule=self.options.size_rule)
        if scan.disk_type == DiskType.FIXED or scan.footer_offset is None:
            return
        if any(f.severity == ERROR and f.code not in OWN_MARK_CODES for f in scan.findings):
            return  # checked before; a file that changed under us is left as it is
        end = scan.data_end
        footer_at = scan.footer_offset
        if footer_at <= end:
            return
        raw = source.read_at(footer_at, FOOTER_SIZE)
        source.write_at(end, raw)
        source.sync()
        source.truncate(end + FOOTER_SIZE)
        source.sync()

    @staticmethod
    def bytes_to_copy(child: Layer, first: int) -> int:
        """The bytes the child's bitmaps mark from block `first` on (one bit per sector)."""
        total = 0
        for index in range(first, child.block_count):
            entry = child.bat[index]
            if entry == UNALLOCATED:
                continue
            sectors = -(-min(child.block_size, child.size - index * child.block_size) // SECTOR)
            bitmap = child.read_data(entry * SECTOR, child.bitmap_size)
            whole, rest = divmod(sectors, 8)
            marked = int.from_bytes(bitmap[:whole], "big").bit_count()
            if rest:
                marked += (bitmap[whole] >> (8 - rest)).bit_count()
            total += marked * SECTOR
        return min(total, child.size)


def commit(child: str, options: OpenOptions | None = None, *, delete_child: bool = False,
           faults: Faults | None = None, quiet: bool = False,
           warn: Callable[[str], None] | None = None,
           checkpoint_bytes: int = CHECKPOINT_BYTES) -> CommitResult:
    """Merge `child` into its parent (see the module text). Restartable after any crash.
    A VHDX child (.avhdx) is committed by vhdfs.maintain.commit_vhdx."""
    if is_vhdx_path(child):
        return commit_vhdx(child, options, delete_child=delete_child, faults=faults, quiet=quiet,
                           warn=warn, checkpoint_bytes=checkpoint_bytes)
    job = _Commit(child, options or OpenOptions(), faults or Faults.from_env(), quiet,
                  warn or log.warning, checkpoint_bytes)
    return job.run(delete_child)


# ---------------------------------------------------------------- vhdfs check --repair
def unfinished_commit_fix(parent: str, state: dict, parent_id: bytes, search: list[str]
                          ) -> Fix | None:
    """The repair of an unfinished commit into `parent` (`state`: journals.commit_state):
    roll it back when nothing was written yet, else finish it; None when the child is not
    found (check then names the command that finishes it).

    Rolling back after the first write is not possible: the parent's old sectors are gone
    (keeping them would double the cost of every commit), so the only way to a consistent
    parent is forward.
    """
    if state.get("phase") == PHASE_PREPARED:
        def rollback(source: FaultySource) -> None:
            clear_commit_mark(source)
            remove_journal(parent, source.faults)
        return Fix(RANK_COMMIT, "roll back the commit, which had not written anything yet: clear "
                   "the mark and delete the journal", rollback)
    child = find_committing_child(parent, state, search, [parent_id], _child_id_text)
    return finish_fix(child, parent, commit, "clear")


def _child_id_text(path: Path) -> str | None:
    raw = unique_id_of(path)
    return format_unique_id(raw) if raw else None
