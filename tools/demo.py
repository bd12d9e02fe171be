"""Demo: a Windows-like VHD chain (base + differencing child with a new Welcome.png), inspected.

Run it through ``./scripts/demo`` (which sets up the venv first). It builds a Windows-like
raw disk (tools/guestimage.py: MBR, active "System Reserved" NTFS with bootmgr and a real
Boot/BCD, "Windows" NTFS with winload.exe, IIS's Welcome.png and the Azure guest agent),
imports it as a dynamic VHD, creates a differencing child, writes a new Welcome.png into the
child (tools/guestedit.py), and shows the chain with ``vhdfs info``, ``volumes``, ``changes``,
``get`` and ``verify``. No cloud is needed. Each command is printed before it runs; the demo
stops at the first failing command and exits with that command's exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `tools` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.guestedit import replace_ntfs_files  # noqa: E402
from tools.guestimage import build_windows_disk, make_png  # noqa: E402
from vhdfs.resolve import OpenOptions, open_chain  # noqa: E402

DISK_SIZE = 128 * 1024 * 1024
WELCOME = "inetpub/wwwroot/Welcome.png"


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
        print("demo: building a Windows-like disk (tools/guestimage.py) as base.raw", flush=True)
        build_windows_disk(workdir / "base.raw", DISK_SIZE, welcome_png=make_png(320, 200, 2012))
        run([vhdfs, "convert", "base.raw", "base.vhd", "--to", "dynamic"], workdir)
        (workdir / "base.raw").unlink()
        run([vhdfs, "create", "child.vhd", "--parent", "base.vhd"], workdir)
        new_png = make_png(320, 200, seed=2024)
        print(f"demo: writing a new {WELCOME} ({len(new_png)} bytes) into child.vhd "
              "(ntfs-3g on a scratch copy of volume 2; the changed sectors go into the child "
              "through Chain.write)", flush=True)
        with open_chain(str(workdir / "child.vhd"), OpenOptions(), writable=True) as chain:
            sectors = replace_ntfs_files(chain, 2, {WELCOME: new_png})
        print(f"demo: {sectors} sectors written into child.vhd", flush=True)
        run([vhdfs, "info", "child.vhd"], workdir)
        run([vhdfs, "volumes", "child.vhd"], workdir)
        run([vhdfs, "changes", "child.vhd"], workdir)
        run([vhdfs, "get", "child.vhd", "C:\\inetpub\\wwwroot\\Welcome.png", "Welcome.png"],
            workdir)
        got = hashlib.sha256((workdir / "Welcome.png").read_bytes()).hexdigest()
        want = hashlib.sha256(new_png).hexdigest()
        print(f"demo: sha256 of the copied Welcome.png {got} "
              f"({'the new picture' if got == want else 'NOT the picture written'})", flush=True)
        if got != want:
            sys.exit(1)
        run([vhdfs, "verify", "child.vhd"], workdir)
    finally:
        if args.keep:
            print(f"demo: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
