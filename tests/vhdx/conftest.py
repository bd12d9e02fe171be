"""Fixtures for the VHDX tests: the shared sample images, decompressed once per session."""

from __future__ import annotations

import bz2
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # vhdxwriter and vhdxtools sit next to the tests
    sys.path.insert(0, str(HERE))

from vhdxtools import SAMPLES  # noqa: E402


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory):
    """Decompress one sample into a session folder (once) and return its path."""
    folder = tmp_path_factory.mktemp("vhdx-samples")

    def get(name: str) -> Path:
        packed = SAMPLES / f"{name}.bz2"
        if not packed.exists():
            pytest.fail(f"sample {packed} is missing (set VHDFS_SAMPLES to the samples folder)")
        out = folder / name
        if not out.exists():
            with bz2.open(packed) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return out

    return get
