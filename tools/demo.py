"""Demo: the image-update workflow end to end, on a sample chain, with Azurite for Azure.

Run it through ``./scripts/demo`` (which sets up the venv first). It

1. builds a Windows-like disk (tests/fixtures/windows.py: MBR, active "System Reserved" NTFS with
   bootmgr and a real Boot/BCD, "Windows" NTFS with winload.exe, IIS's Welcome.png and the
   Azure guest agent) and imports it as a dynamic VHD: the base;
2. creates a differencing child and replaces ``C:\\inetpub\\wwwroot\\Welcome.png`` in it with one
   ``vhdfs put`` (no root, no mount of the guest: vhdfs mounts the chain in a private folder
   and ntfs-3g writes the partition file there); every write lands in the child;
3. verifies the image: ``info``, ``volumes``, ``changes`` (what the child changed),
   ``get`` (the new picture), ``inspect`` (the Windows it holds, from its hives) and ``verify``
   (chain, agent, boot volume, the generalized image Azure provisions, Azure size rules);
4. starts Azurite on 127.0.0.1 and uploads the flattened disk as a fixed-VHD page blob
   (only the 512-byte pages that hold data: the data sent equals the disk's non-zero
   sectors), then the base and the child as they are, links them,
   and reads the picture back from blob storage lazily (``--stats`` shows how little);
5. commits the child into its base.

Each command is printed before it runs; the demo stops at the first failing command with
its exit code. Step 2 needs /dev/fuse (vhdfs's own mount; docs/mount.md shows the same change
made by hand with mount --rw, a loop device and ntfs-3g); without Azurite, step 4 is skipped
with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `tools` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.content import make_png  # noqa: E402
from tests.fixtures.windows import build_windows_disk  # noqa: E402
from tools.azurite import Azurite, azurite_binary  # noqa: E402

DISK_SIZE = 128 * 1024 * 1024
WELCOME = "C:\\inetpub\\wwwroot\\Welcome.png"
CONTAINER = "images"


def vhdfs_command() -> str:
    """The ``vhdfs`` entry point of the venv running this script."""
    candidate = Path(sys.executable).parent / "vhdfs"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("vhdfs")
    if found is None:
        sys.exit("demo: no 'vhdfs' command found (run ./scripts/setup)")
    return found


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        capture: bool = False) -> str:
    shown = ["vhdfs", *argv[1:]] if Path(argv[0]).name == "vhdfs" else argv
    print(f"$ {shlex.join(shown)}", flush=True)
    result = subprocess.run(argv, cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        print(f"demo: command failed with exit code {result.returncode}", file=sys.stderr)
        sys.exit(result.returncode)
    return result.stdout or ""


def check_picture(path: Path, want: bytes) -> None:
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    right = got == hashlib.sha256(want).hexdigest()
    say(f"sha256 of {path.name}: {got} ({'the new picture' if right else 'NOT the new picture'})")
    if not right:
        sys.exit(1)


def nonzero_sector_bytes(path: Path) -> int:
    """Bytes of the 512-byte sectors of a raw disk that hold a non-zero byte."""
    zero, count = bytes(512), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += sum(1 for at in range(0, len(chunk), 512) if chunk[at:at + 512] != zero)
    return count * 512


def azure_steps(vhdfs: str, workdir: Path, new_png: bytes) -> None:
    binary = azurite_binary()
    if binary is None:
        say("skipping the Azure steps: Azurite is not installed (./scripts/setup installs it)")
        return
    with Azurite(binary, workdir / "azurite", in_memory=True) as server:
        say(f"Azurite (the Azure Storage emulator) listens on {server.endpoint}")
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": server.connection_string}
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(server.connection_string) \
            .create_container(CONTAINER)
        base_url = f"{server.endpoint}/{CONTAINER}"
        result = json.loads(run([vhdfs, "upload", "child.vhd", f"{base_url}/web-v2-disk.vhd",
                                 "--verify", "--json"], workdir, env, capture=True))
        # Only pages that hold data go up: the data sent is the disk's non-zero sectors.
        run([vhdfs, "convert", "child.vhd", "flat.raw", "--to", "raw"], workdir)
        held = nonzero_sector_bytes(workdir / "flat.raw")
        (workdir / "flat.raw").unlink()
        data_sent = result["sent"] - 512  # the footer aside
        say(f"the disk's non-zero sectors hold {held} bytes; the upload sent {data_sent} bytes of "
            f"data (and the 512-byte footer): {'equal' if data_sent == held else 'NOT equal'}")
        if data_sent != held:
            sys.exit(1)
        run([vhdfs, "info", f"{base_url}/web-v2-disk.vhd"], workdir, env)
        run([vhdfs, "upload", "base.vhd", f"{base_url}/base.vhd", "--as-is"], workdir, env)
        run([vhdfs, "upload", "child.vhd", f"{base_url}/child.vhd", "--as-is"], workdir, env)
        run([vhdfs, "set-parent", f"{base_url}/child.vhd", f"{base_url}/base.vhd"], workdir,
            env)
        with open(workdir / "remote-Welcome.png", "wb") as out:
            argv = [vhdfs, "cat", f"{base_url}/child.vhd", WELCOME, "--stats"]
            print(f"$ {shlex.join(['vhdfs', *argv[1:]])} > remote-Welcome.png", flush=True)
            result = subprocess.run(argv, cwd=workdir, env=env, stdout=out)
        if result.returncode:
            sys.exit(result.returncode)
        check_picture(workdir / "remote-Welcome.png", new_png)
        # verify reads the blob chain lazily: --stats shows how little of the disk it fetched
        run([vhdfs, "verify", f"{base_url}/child.vhd", "--stats"], workdir, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory and print its path")
    args = parser.parse_args()

    vhdfs = vhdfs_command()
    workdir = Path(tempfile.mkdtemp(prefix="vhdfs-demo-"))
    try:
        say(f"working in {workdir}")
        say("1. a Windows-like base disk (tests/fixtures/windows.py; generalized with Sysprep, as "
            "its hives say), imported as a dynamic VHD")
        build_windows_disk(workdir / "base.raw", DISK_SIZE, welcome_png=make_png(320, 200, 2012))
        run([vhdfs, "convert", "base.raw", "base.vhd", "--to", "dynamic"], workdir)
        (workdir / "base.raw").unlink()
        base_digest = hashlib.sha256((workdir / "base.vhd").read_bytes()).hexdigest()

        say("2. a differencing child; Welcome.png replaced in the guest by vhdfs put (no root)")
        run([vhdfs, "create", "child.vhd", "--parent", "base.vhd"], workdir)
        new_png = make_png(320, 200, seed=2024)
        (workdir / "new-Welcome.png").write_bytes(new_png)
        run([vhdfs, "put", "child.vhd", "new-Welcome.png", WELCOME, "--force"], workdir)
        same = hashlib.sha256((workdir / "base.vhd").read_bytes()).hexdigest() == base_digest
        say(f"base.vhd is {'unchanged' if same else 'CHANGED'} (sha256): the writes are in "
            "child.vhd only")
        if not same:
            sys.exit(1)

        say("3. verify the image")
        run([vhdfs, "info", "child.vhd"], workdir)
        run([vhdfs, "volumes", "child.vhd"], workdir)
        run([vhdfs, "changes", "child.vhd"], workdir)
        run([vhdfs, "get", "child.vhd", WELCOME, "Welcome.png"], workdir)
        check_picture(workdir / "Welcome.png", new_png)
        run([vhdfs, "inspect", "child.vhd"], workdir)
        run([vhdfs, "verify", "child.vhd"], workdir)

        say("4. upload to Azure (Azurite stands in) and read back lazily")
        azure_steps(vhdfs, workdir, new_png)

        say("5. commit the child into its base")
        run([vhdfs, "commit", "child.vhd"], workdir)
        run([vhdfs, "get", "base.vhd", WELCOME, "base-Welcome.png"], workdir)
        check_picture(workdir / "base-Welcome.png", new_png)
        say("done")
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
