"""Test tiers: every test gets the marker of its tier from where it lives (README, "Tests").

    unit   no mount, no Azurite, no qemu-img: formats, layers and chains,
           VHDX reading and writing, the command line                        (seconds)
    interop  cross-checks against qemu-img and the sample images (qemu-img runs)
    ops    operations on real files: commit, check, set-parent, the VHDX commands, and the
           FUSE operations called with a fake request context (no mount)
    fuse   real mounts: vhdfs mount, guest disks built through ntfs-3g, libvhdi's vhdimount,
           fault injection under a mount
    azure  Azurite on 127.0.0.1, started by the tests
    slow   crash replay (also marked `crash`), the hostile corpus, the fuzzing profile of the
           soak, the run from a fresh clone, and any test marked slow where it stands (such a
           test is in this tier only, so `-m unit` stays quick)

`./scripts/test -m unit` runs the first tier alone; `-m "not slow"` leaves out the long ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

#: Markers by place under tests/ (a folder or a file); the most specific place wins.
TIERS: dict[str, tuple[str, ...]] = {
    "format": ("unit",),
    "layer_chain": ("unit",),
    "cli": ("unit",),
    "vhdx": ("unit",),
    "vhdx/test_vhdx_commit.py": ("ops",),
    "vhdx/test_vhdx_check.py": ("ops",),
    "vhdx/test_vhdx_setparent.py": ("ops",),
    "vhdx/test_vhdx_cli.py": ("ops",),
    "vhdx/test_vhdx_write_qemu.py": ("interop",),
    "vhdx/test_vhdx_qemu_model.py": ("interop",),
    "vhdx/test_vhdx_samples.py": ("interop",),
    "vhdx/test_vhdx_write_crash.py": ("crash", "slow"),
    "vhdx/test_vhdx_commit_crash.py": ("crash", "slow"),
    "vhdx/test_vhdx_mount_rw.py": ("fuse",),
    "vhdx/test_vhdx_mount_crash.py": ("crash", "slow"),
    "interop": ("interop",),
    "interop/test_libvhdi.py": ("interop", "fuse"),
    "ops": ("ops",),
    "ops/test_commit_crash.py": ("crash", "slow"),
    "ops/test_resize_crash.py": ("crash", "slow"),  # errorfs too: a FUSE pass-through
    "fuse": ("fuse",),
    "fuse/test_times_ops.py": ("ops",),
    "guest": ("fuse",),
    "guest/write": ("fuse",),  # put, rm, mkdir: a private mount, ntfs-3g, debugfs, mtools
    "guest/write/test_plan.py": ("unit",),  # planning through the chain, nothing mounted
    "guest/write/test_tools.py": ("unit",),  # debugfs and mtools on plain image files
    "guest/test_skip_free_view.py": ("unit",),  # the chain view --skip-free reads through
    "guest/test_skip_free_upload.py": ("azure",),
    "azure": ("azure",),
    "hostile": ("fuse",),
    "hostile/test_hostile_corpus.py": ("slow",),
    "hostile/test_hostile_crash.py": ("crash", "slow"),
    "hostile/test_hostile_fuzz.py": ("slow",),
    "clone": ("slow",),
    "test_tiers.py": ("unit",),
}


def tier_of(path: Path) -> tuple[str, ...] | None:
    """The markers of a test file, from the most specific entry of TIERS that holds it."""
    try:
        rel = path.resolve().relative_to(TESTS)
    except ValueError:  # a test file given on the command line from outside tests/
        return None
    for place in (rel, *rel.parents):
        markers = TIERS.get(place.as_posix())
        if markers is not None:
            return markers
    return None


#: A tier marker set on a test where it stands replaces its place's tier.
TIER_MARKERS = {"unit", "interop", "ops", "fuse", "azure", "slow"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in TIER_MARKERS):
            continue  # e.g. slow or interop where it stands: that tier only
        for marker in tier_of(Path(item.path)) or ():
            item.add_marker(marker)


@pytest.fixture(autouse=True)
def _tier_of_the_running_test(request: pytest.FixtureRequest) -> Iterator[None]:
    from tests import tooling

    tooling.RUNNING_TIERS.clear()
    tooling.RUNNING_TIERS.update(m.name for m in request.node.iter_markers())
    yield
    tooling.RUNNING_TIERS.clear()
