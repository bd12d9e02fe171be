"""Demo: build a tiny VHD differencing chain with the ``vhdfs`` command and show it.

Run it through ``./scripts/demo`` (which sets up the venv first). Each command is
printed before it runs; the demo stops at the first failing command and exits
with that command's exit code.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def vhdfs_command() -> str:
    """The ``vhdfs`` entry point of the venv running this script."""
    candidate = Path(sys.executable).parent / "vhdfs"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("vhdfs")
    if found is None:
        sys.exit("demo: no 'vhdfs' command found (run ./scripts/setup)")
    return found


def run(argv: list[str], cwd: Path) -> None:
    shown = ["vhdfs", *argv[1:]] if Path(argv[0]).name == "vhdfs" else argv
    print(f"$ {shlex.join(shown)}", flush=True)
    result = subprocess.run(argv, cwd=cwd)
    if result.returncode != 0:
        print(f"demo: command failed with exit code {result.returncode}", file=sys.stderr)
        sys.exit(result.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory and print its path"
    )
    args = parser.parse_args()

    vhdfs = vhdfs_command()
    workdir = Path(tempfile.mkdtemp(prefix="vhdfs-demo-"))
    try:
        print(f"demo: working in {workdir}", flush=True)
        run([vhdfs, "create", "base.vhd", "--size", "64M"], workdir)
        run([vhdfs, "create", "child.vhd", "--parent", "base.vhd"], workdir)
        run([vhdfs, "info", "child.vhd"], workdir)
    finally:
        if args.keep:
            print(f"demo: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
