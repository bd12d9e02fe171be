"""Fixtures for the VHDX tests: the sample images, made here or unpacked once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.samples import MADE, unpack_sample

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # vhdxwriter and vhdxtools sit next to the tests
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory):
    """The path of one sample, by name (once per session): made here when it is one of MADE
    (tests/fixtures/samples.py), else unpacked from the third-party samples folder (the test
    skips, naming the folder, when the file is not there)."""
    folder = tmp_path_factory.mktemp("vhdx-samples")

    def get(name: str) -> Path:
        if name in MADE:
            out = folder / name
            return out if out.exists() else MADE[name](out)
        return unpack_sample(name, folder)

    return get
