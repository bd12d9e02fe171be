"""One set of VHD structure rules (vhdfs/vhd/rules.py), used by the reader and by `check`:
wherever the reader stops at a damaged structure, or marks a block it cannot read, `vhdfs
check` reports that problem in the same words, on every case of the hostile corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import hostile
from tests.hostile.test_hostile_corpus import options_of
from vhdfs.errors import ChecksumError, FormatError
from vhdfs.maintain.findings import CannotCheck
from vhdfs.maintain.scan import scan_file
from vhdfs.resolve import open_chain
from vhdfs.sources.local import LocalFile

# Where the file as a whole is not a VHD, check has its own view by design: an empty or tiny
# file cannot be checked at all, trailing bytes are garbage it offers to cut off.
WHOLE_FILE = ("file-empty", "file-tiny", "file-odd-size")


def check_text(image: Path) -> str:
    """Everything `check` says about one file: its findings, or why it could not check."""
    try:
        with LocalFile(image) as source:
            scan = scan_file(source)
    except CannotCheck as exc:
        return str(exc)
    return "\n".join(f.message for f in scan.findings)


REFUSED = [c for c in hostile.CASES if c.info.error is FormatError and c.name not in WHOLE_FILE]
DAMAGED_BLOCKS = [c for c in hostile.CASES if c.group == "bat" and c.info.ok]


def test_the_corpus_has_cases_of_each_kind() -> None:
    assert len(REFUSED) >= 15 and len(DAMAGED_BLOCKS) >= 4


@pytest.mark.parametrize("case", REFUSED, ids=[c.name for c in REFUSED])
def test_check_reports_what_the_reader_refuses_in_its_words(case: hostile.Case,
                                                           tmp_path: Path) -> None:
    built = case.build(tmp_path)
    with pytest.raises(FormatError) as refused:
        open_chain(str(built.image), options_of(built)).close()
    assert not isinstance(refused.value, ChecksumError)
    assert refused.value.what in check_text(built.image)


@pytest.mark.parametrize("case", DAMAGED_BLOCKS, ids=[c.name for c in DAMAGED_BLOCKS])
def test_check_names_the_blocks_the_reader_cannot_read(case: hostile.Case, tmp_path: Path) -> None:
    built = case.build(tmp_path)
    with open_chain(str(built.image), options_of(built)) as chain:
        damaged = chain.top.bad_blocks
    assert damaged
    said = check_text(built.image)
    for reason in damaged.values():
        assert reason in said
