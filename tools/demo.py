"""Demo: the image-update workflow end to end, on a sample chain, with Azurite for Azure.

Run it through ``./scripts/demo`` (which sets up the venv first). It

1. builds a Windows-like disk (tests/fixtures/windows.py: MBR, active "System Reserved" NTFS with
   bootmgr and a real Boot/BCD, "Windows" NTFS with winload.exe, IIS's Welcome.png and the
   Azure guest agent) and imports it as a dynamic VHD: the base;
2. creates a differencing child, mounts the chain writable (``vhdfs mount --rw``), mounts
   its partition file ``p2`` with ntfs-3g through a loop device and replaces
   ``inetpub/wwwroot/Welcome.png``; every write lands in the child;
3. verifies the image: ``info``, ``volumes``, ``changes`` (what the child changed),
   ``get`` (the new picture), ``inspect`` (the Windows it holds, from its hives) and ``verify``
   (chain, agent, boot volume, the generalized image Azure provisions, Azure size rules);
4. starts Azurite on 127.0.0.1 and uploads the flattened disk as a fixed-VHD page blob
   (only the ranges that hold data), then the base and the child as they are, links them,
   and reads the picture back from blob storage lazily (``--stats`` shows how little);
5. commits the child into its base.

Each command is printed before it runs; the demo stops at the first failing command with
its exit code. Without root, a loop device or /dev/fuse, step 2 falls back to editing a
scratch copy of the volume with ntfs-3g (tests/fixtures/ntfsedit.py); without Azurite, step 4 is
skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `tools` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.content import make_png  # noqa: E402
from tests.fixtures.ntfsedit import replace_ntfs_files  # noqa: E402
from tests.fixtures.windows import build_windows_disk  # noqa: E402
from tools.azurite import Azurite, azurite_binary  # noqa: E402
from vhdfs.resolve import OpenOptions, open_chain  # noqa: E402

DISK_SIZE = 128 * 1024 * 1024
WELCOME = "inetpub/wwwroot/Welcome.png"
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


def can_loop_mount() -> str | None:
    """Why the real mount workflow cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root (loop devices and mounts need root)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices"
    for tool in ("losetup", "ntfs-3g", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@contextlib.contextmanager
def mounted_windows_volume(vhdfs: str, workdir: Path) -> Iterator[Path]:
    """child.vhd mounted --rw, its p2 on a loop device, that mounted with ntfs-3g."""
    mnt, win = workdir / "mnt", workdir / "win"
    mnt.mkdir()
    win.mkdir()
    run([vhdfs, "mount", "child.vhd", "mnt", "--rw"], workdir)
    loop = None
    try:
        loop = run(["losetup", "--find", "--show", str(mnt / "p2")], workdir, capture=True).strip()
        run(["ntfs-3g", loop, str(win)], workdir)
        try:
            yield win
        finally:
            subprocess.run(["umount", str(win)], check=False)
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        run([vhdfs, "umount", "mnt"], workdir)


def replace_welcome(vhdfs: str, workdir: Path, new_png: bytes) -> None:
    reason = can_loop_mount()
    if reason is None:
        with mounted_windows_volume(vhdfs, workdir) as win:
            target = win / WELCOME
            say(f"replacing {target.relative_to(workdir)} ({len(new_png)} bytes)")
            target.write_bytes(new_png)
        return
    say(f"cannot mount here ({reason}): writing the new {WELCOME} into child.vhd with "
        "ntfs-3g on a scratch copy of volume 2 instead (tests/fixtures/ntfsedit.py)")
    with open_chain(str(workdir / "child.vhd"), OpenOptions(), writable=True) as chain:
        sectors = replace_ntfs_files(chain, 2, {WELCOME: new_png})
    say(f"{sectors} sectors written into child.vhd")


def check_picture(path: Path, want: bytes) -> None:
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    right = got == hashlib.sha256(want).hexdigest()
    say(f"sha256 of {path.name}: {got} ({'the new picture' if right else 'NOT the new picture'})")
    if not right:
        sys.exit(1)


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
        run([vhdfs, "upload", "child.vhd", f"{base_url}/web-v2-disk.vhd", "--verify",
             "--stats"], workdir, env)
        run([vhdfs, "info", f"{base_url}/web-v2-disk.vhd"], workdir, env)
        run([vhdfs, "upload", "base.vhd", f"{base_url}/base.vhd", "--as-is"], workdir, env)
        run([vhdfs, "upload", "child.vhd", f"{base_url}/child.vhd", "--as-is"], workdir, env)
        run([vhdfs, "set-parent", f"{base_url}/child.vhd", f"{base_url}/base.vhd"], workdir,
            env)
        with open(workdir / "remote-Welcome.png", "wb") as out:
            argv = [vhdfs, "cat", f"{base_url}/child.vhd", "C:\\inetpub\\wwwroot\\Welcome.png",
                    "--stats"]
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

        say("2. a differencing child, mounted writable; Welcome.png replaced in the guest")
        run([vhdfs, "create", "child.vhd", "--parent", "base.vhd"], workdir)
        new_png = make_png(320, 200, seed=2024)
        replace_welcome(vhdfs, workdir, new_png)
        same = hashlib.sha256((workdir / "base.vhd").read_bytes()).hexdigest() == base_digest
        say(f"base.vhd is {'unchanged' if same else 'CHANGED'} (sha256): the writes are in "
            "child.vhd only")
        if not same:
            sys.exit(1)

        say("3. verify the image")
        run([vhdfs, "info", "child.vhd"], workdir)
        run([vhdfs, "volumes", "child.vhd"], workdir)
        run([vhdfs, "changes", "child.vhd"], workdir)
        run([vhdfs, "get", "child.vhd", "C:\\inetpub\\wwwroot\\Welcome.png", "Welcome.png"],
            workdir)
        check_picture(workdir / "Welcome.png", new_png)
        run([vhdfs, "inspect", "child.vhd"], workdir)
        run([vhdfs, "verify", "child.vhd"], workdir)

        say("4. upload to Azure (Azurite stands in) and read back lazily")
        azure_steps(vhdfs, workdir, new_png)

        say("5. commit the child into its base")
        run([vhdfs, "commit", "child.vhd"], workdir)
        run([vhdfs, "get", "base.vhd", "C:\\inetpub\\wwwroot\\Welcome.png",
             "base-Welcome.png"], workdir)
        check_picture(workdir / "base-Welcome.png", new_png)
        say("done")
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
