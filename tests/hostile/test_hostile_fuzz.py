"""Structure-aware fuzzing, quick profile (the long one: python -m tools.soak).

Valid seed images (fixed, dynamic, differencing over dynamic and over fixed) get their footer,
footer copy, header, BAT, bitmap and locator fields and bytes mutated; each mutated image goes
through info, check, a full read and a write that must read back (tools/soak.py `exercise`).
Success or a VhdfsError are the only acceptable outcomes; a hang (deadline) or an allocation
above the cap fails the example.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools import soak

EXAMPLES_PER_FAMILY = 60


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, soak.Seed]:
    return {seed.name: seed for seed in soak.build_seeds(tmp_path_factory.mktemp("seeds"))}


@pytest.fixture(autouse=True)
def _quiet_warnings():
    """Damaged images warn by the hundred; the warnings are not what is tested here."""
    log = logging.getLogger("vhdfs")
    handler = logging.NullHandler()
    log.addHandler(handler)
    old = log.propagate
    log.propagate = False
    yield
    log.propagate = old
    log.removeHandler(handler)


@pytest.mark.parametrize("family", sorted(soak.FAMILIES))
def test_mutated_images_fail_cleanly(family: str, seeds: dict[str, soak.Seed],
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp(f"fuzz-{family}") / "work"
    outcomes: list[soak.Result] = []

    @settings(max_examples=EXAMPLES_PER_FAMILY, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow])
    @given(name=st.sampled_from(sorted(seeds)), rng=st.randoms(use_true_random=False))
    def run(name: str, rng: random.Random) -> None:
        seed = seeds[name]
        mutations = soak.mutations_for(rng, seed, family)
        outcomes.append(soak.run_one(seed, mutations, rng, work))

    run()
    # The profile reached every operation: some images opened, some were refused.
    assert any(r.opened == "ok" for r in outcomes)
    assert any(r.opened not in ("ok", None) or r.read not in ("ok", None) for r in outcomes) or \
        family in ("bitmap",)


def test_deadline_and_allocation_cap_fire() -> None:
    """The guards of the fuzzer fail an example, rather than let it pass."""
    with pytest.raises(soak.Hang):
        with soak.deadline(0.2):
            time.sleep(5)
    with pytest.raises(soak.MemoryBlowUp):
        with soak.allocation_cap(1 << 20):
            blob = bytes(4 << 20)
            del blob


def test_a_mutation_changes_the_file(seeds: dict[str, soak.Seed], tmp_path: Path) -> None:
    seed = seeds["chain"]
    rng = random.Random(5)
    work = tmp_path / "work"
    shutil.copytree(seed.folder, work)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    soak.apply(work, [soak.Mutation("child.vhd", "bat[0]", seed.files[0].bat_at, b"\0\0\0\1")])
    after = {p.name: p.read_bytes() for p in work.iterdir()}
    assert before["base.vhd"] == after["base.vhd"]
    assert before["child.vhd"] != after["child.vhd"]
    assert soak.run_one(seed, [soak.Mutation("child.vhd", "bat[0]", seed.files[0].bat_at, b"\0\0\0\1")],
                        rng, work).read == "FormatError"
