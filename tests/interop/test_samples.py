"""Third-party sample images (Virtual PC, Hyper-V 2012 R2, Disk2vhd) open with our size rule.

Only those programs write these files, so they are not part of the repository: each test
skips, naming the file and the samples folder, when the folder does not hold it
(tests/fixtures/samples.py: $VHDFS_SAMPLES, else ../shared/samples beside the repository).

Rule (documented in the README, overridable with --size-rule): the footer's current size,
except for disks made by Virtual PC ('vpc ') or old qemu ('qemu'), which size disks by CHS
geometry, unless the geometry is the maximum (then it cannot express the size).
"""

from __future__ import annotations

import pytest

from tests.fixtures.samples import unpack_sample as sample
from tests.tooling import run
from vhdfs.resolve import OpenOptions, open_chain


@pytest.mark.parametrize(("name", "auto", "current", "chs"), [
    ("virtualpc-dynamic.vhd", 136363130880, 136365211648, 136363130880),
    ("hyperv2012r2-dynamic.vhd", 136365211648, 136365211648, 136363130880),
    ("d2v-zerofilled.vhd", 263454720, 263454720, 136899993600),
])
def test_sample_sizes(tmp_path, name, auto, current, chs):
    path = sample(name, tmp_path)
    for rule, expected in (("auto", auto), ("current", current)):
        with open_chain(str(path), OpenOptions(size_rule=rule)) as chain:
            assert chain.size == expected
    if chs <= current:
        with open_chain(str(path), OpenOptions(size_rule="chs")) as chain:
            assert chain.size == chs
    # our default agrees with qemu-img's own choice for these writers
    assert f"({auto} bytes)" in run("qemu-img", "info", "-f", "vpc", str(path))


def test_d2v_sample_reads_like_qemu(tmp_path):
    path = sample("d2v-zerofilled.vhd", tmp_path)
    reference = tmp_path / "ref.raw"
    run("qemu-img", "convert", "-f", "vpc", "-O", "raw", str(path), str(reference))
    with open_chain(str(path)) as chain:
        assert chain.read(0, chain.size) == reference.read_bytes()
