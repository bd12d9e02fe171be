"""Every test module has a tier (tests/conftest.py), and every tier is a registered marker."""

from __future__ import annotations

import tomllib

from tests.conftest import TESTS, TIERS, tier_of


def test_every_test_module_has_a_tier() -> None:
    untiered = [str(p.relative_to(TESTS)) for p in sorted(TESTS.rglob("test_*.py"))
                if tier_of(p) is None]
    assert untiered == [], f"add these to TIERS in tests/conftest.py: {untiered}"


def test_every_tier_marker_is_registered() -> None:
    config = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
    registered = {line.split(":")[0] for line in config["tool"]["pytest"]["ini_options"]["markers"]}
    used = {marker for markers in TIERS.values() for marker in markers}
    assert used <= registered, used - registered


def test_the_most_specific_place_wins() -> None:
    assert tier_of(TESTS / "ops" / "test_commit.py") == ("ops",)
    assert tier_of(TESTS / "ops" / "test_commit_crash.py") == ("crash", "slow")
    assert tier_of(TESTS / "hostile" / "test_hostile_corpus.py") == ("slow",)
    assert tier_of(TESTS / "hostile" / "test_hostile_edges.py") == ("fuse",)
