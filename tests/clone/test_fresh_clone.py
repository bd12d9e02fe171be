"""A fresh clone passes its own tests: nothing outside the repository is needed.

The committed tree (HEAD) is cloned into a temporary folder that has no ``../shared`` beside
it, and pytest runs there with this interpreter (its installed dependencies are reused; the
clone's own ``vhdfs`` package is imported, by PYTHONPATH, in every child process too): every
test module that uses sample images, and a collection of the whole suite (an import that
reaches outside the clone fails it). Samples that only third-party programs write must skip
with their name and folder; everything made here must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_MODULES = ("tests/vhdx/test_vhdx_samples.py", "tests/interop/test_samples.py")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (or git is missing): there is no HEAD to clone")
    out = tmp_path_factory.mktemp("fresh") / "vhdfs"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(out)], check=True, capture_output=True)
    assert not (out.parent / "shared").exists()
    return out


def pytest_in(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VHDFS_SAMPLES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(clone)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=900)


def test_sample_tests_pass_in_a_fresh_clone(clone: Path) -> None:
    done = pytest_in(clone, "-v", "-rs", *SAMPLE_MODULES)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    outcomes = {line.split(" ")[0]: line.split(" ")[1] for line in done.stdout.splitlines()
                if line.startswith("tests/") and "::" in line and " " in line}
    made = {test: outcome for test, outcome in outcomes.items() if "[made" in test}
    assert len(made) >= 5 and set(made.values()) == {"PASSED"}, report
    assert set(outcomes.values()) <= {"PASSED", "SKIPPED"}, report
    skips = [line for line in report.splitlines() if line.startswith("SKIPPED")]
    assert all("third-party sample" in line and "VHDFS_SAMPLES" in line for line in skips), report


def test_the_clone_imports_its_own_code(clone: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import vhdfs, tests.fixtures; "
                           "print(vhdfs.__file__); print(tests.fixtures.__file__)"],
                          cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)},
                          capture_output=True, text=True, check=True)
    assert all(Path(line).is_relative_to(clone) for line in done.stdout.split()), done.stdout


def test_the_whole_suite_collects_in_a_fresh_clone(clone: Path) -> None:
    done = pytest_in(clone, "--collect-only", "-q")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "tests collected" in done.stdout, done.stdout[-2000:]
