#!/usr/bin/env python3
"""Build realistic RAW guest disk images for tests and the demo.

Two kinds of disk are produced, both as sparse raw files:

* a Windows-style MBR disk (``build_windows_disk``): an active 0x07 NTFS
  "System Reserved" partition with ``bootmgr`` and ``Boot/BCD`` and an NTFS
  "Windows" partition with a small Windows/IIS/Azure-guest-agent tree;
* a Debian-12-style GPT disk (``build_linux_disk``): a FAT32 EFI system
  partition and an ext4 root file system holding the Azure Linux agent
  (WALinuxAgent) as a distribution package installs it.

Each file system is built in a separate file with ordinary command-line tools
(``mkntfs`` + ``ntfs-3g``, ``mkfs.ext4 -d``, ``mkfs.vfat`` + ``mtools``), the
partition table is written with ``sfdisk`` on the image file, and the
partition files are copied into the image skipping zero blocks so the result
stays sparse.  Nothing here needs root except what the NTFS FUSE mount needs
(``ntfs-3g`` is usually installed setuid root, so normally nothing).

The module is importable as ``tools.guestimage`` and also a CLI::

    python tools/guestimage.py windows OUT.raw [--size 256M]
    python tools/guestimage.py linux OUT.raw [--size 256M]

which prints the layout (see the builders' return values) as JSON.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.util
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `tools` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.bcdstore import build_mbr_bcd  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SECTOR = 512
#: Partitions start on 1 MiB boundaries, as Windows (since Vista) and parted do.
ALIGN = 1 * MiB

#: MBR partition type of NTFS / exFAT / HPFS.
MBR_TYPE_NTFS = 0x07
#: GPT partition type GUIDs.
GPT_TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GPT_TYPE_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

DEFAULT_DISK_SIGNATURE = 0x5EED1D15
DEFAULT_LINUX_DISK_GUID = "6B2B6D3C-6A0E-4F49-9C58-0C2D5E9A1F01"
DEFAULT_ESP_PARTUUID = "0E3F7A52-2A73-4B8C-8B55-8D3AC1A0E001"
DEFAULT_ROOT_PARTUUID = "7D4C9B1E-5F2A-4E63-9A1D-3C6E8F0B2002"
DEFAULT_ROOT_UUID = "3c1f2d4e-8a9b-4c7d-9e0f-123456789abc"
DEFAULT_ESP_VOLUME_ID = 0x1A2B3C4D
DEFAULT_WAAGENT_VERSION = "2.9.1.1"
WINDOWS_AGENT_DIR = "WindowsAzure/GuestAgent_2.7.41491.1010_2023-01-01_000000"
DEBIAN_KERNEL = "6.1.0-18-amd64"

__all__ = [
    "GuestImageError",
    "build_linux_disk",
    "build_ntfs_volume",
    "build_windows_disk",
    "find_distlib_launcher",
    "make_efi_stub",
    "make_png",
    "parse_size",
]


class GuestImageError(RuntimeError):
    """A tool failed or is missing while building an image."""


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        # the e2fsprogs/dosfstools/ntfs-3g tools often live in sbin, which is
        # not on a non-root user's PATH
        for d in ("/usr/sbin", "/sbin"):
            cand = Path(d) / tool
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
        raise GuestImageError(f"required tool {tool!r} not found on PATH")
    return path


def _run(cmd: list[str], *, input: bytes | None = None, env: dict | None = None) -> str:
    exe = _require(cmd[0])
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    proc = subprocess.run(
        [exe, *cmd[1:]],
        input=input,
        capture_output=True,
        env=full_env,
        check=False,
    )
    if proc.returncode != 0:
        raise GuestImageError(
            f"{' '.join(cmd)} failed with exit status {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}{proc.stdout.decode(errors='replace')}"
        )
    return proc.stdout.decode(errors="replace")


def _check_relpath(path: str) -> str:
    p = path.strip("/")
    parts = p.split("/")
    if not p or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"bad relative path in file map: {path!r}")
    return p


def _align_down(value: int, align: int) -> int:
    return value // align * align


def parse_size(text: str | int) -> int:
    """Parse ``256M``, ``1G``, ``512K``, ``4096`` (bytes) or ``1MiB`` into bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if s and s[-1] in "KMGT":
        mult = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}[s[-1]]
        s = s[:-1]
    try:
        value = int(s) * mult
    except ValueError:
        raise ValueError(f"bad size: {text!r}") from None
    if value <= 0:
        raise ValueError(f"bad size: {text!r}")
    return value


def _copy_sparse(src: Path, dst_fd: int, offset: int, block: int = 64 * KiB) -> None:
    """Copy ``src`` into the open file ``dst_fd`` at ``offset``, skipping zeros.

    Holes of ``src`` are skipped with SEEK_DATA/SEEK_HOLE and all-zero blocks
    of its data are not written either, so a sparse destination stays sparse.
    """
    zero = bytes(block)
    with open(src, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
                hole = os.lseek(fd, data, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole remains
                    break
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                data, hole = pos, end  # no SEEK_DATA support: scan everything
            p = data
            while p < hole:
                n = min(block, hole - p)
                buf = os.pread(fd, n, p)
                if not buf:
                    break
                if buf != zero[: len(buf)]:
                    os.pwrite(dst_fd, buf, offset + p)
                p += len(buf)
            pos = hole


def _new_sparse_file(path: Path, size: int) -> None:
    if size % SECTOR:
        raise ValueError(f"size {size} is not a multiple of {SECTOR}")
    with open(path, "wb") as f:
        f.truncate(size)


def _sfdisk(image: Path, script: str) -> None:
    _run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never", "-q", str(image)],
        input=script.encode(),
    )


def _assemble(out: Path, size: int, table: str, parts: list[tuple[int, Path]]) -> None:
    """Create ``out`` sparse, write partition table ``table``, copy partitions in."""
    _new_sparse_file(out, size)
    _sfdisk(out, table)
    fd = os.open(out, os.O_WRONLY)
    try:
        for start, part_file in parts:
            _copy_sparse(part_file, fd, start)
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def make_png(width: int, height: int, seed: int) -> bytes:
    """Return a valid 8-bit RGB PNG picture of ``width`` x ``height`` pixels.

    The picture (a two-colour diagonal gradient with a few discs and bars)
    is derived from ``seed``; different seeds give visibly different images.
    """
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise ValueError("width and height must be in 1..8192")
    rng = random.Random(seed)
    c0 = [rng.randrange(256) for _ in range(3)]
    c1 = [rng.randrange(256) for _ in range(3)]
    shapes = []
    for _ in range(rng.randint(3, 7)):
        color = bytes(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            cx, cy = rng.randrange(width), rng.randrange(height)
            r = rng.randint(max(1, min(width, height) // 12), max(2, min(width, height) // 3))
            shapes.append(("disc", cx, cy, r, color))
        else:
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1 = min(width, x0 + rng.randint(1, max(1, width // 2)))
            y1 = min(height, y0 + rng.randint(1, max(1, height // 6)))
            shapes.append(("bar", x0, y0, x1, y1, color))
    denom = max(1, width + height - 2)
    raw = bytearray()
    for y in range(height):
        row = bytearray(3 * width)
        for x in range(width):
            t = (x + y) / denom
            row[3 * x : 3 * x + 3] = bytes(int(c0[i] + (c1[i] - c0[i]) * t) for i in range(3))
        for shape in shapes:
            if shape[0] == "disc":
                _, cx, cy, r, color = shape
                dy = y - cy
                if abs(dy) <= r:
                    half = int((r * r - dy * dy) ** 0.5)
                    xa, xb = max(0, cx - half), min(width, cx + half + 1)
                    if xa < xb:
                        row[3 * xa : 3 * xb] = color * (xb - xa)
            else:
                _, xa, ya, xb, yb, color = shape
                if ya <= y < yb:
                    row[3 * xa : 3 * xb] = color * (xb - xa)
        raw += b"\x00" + row  # filter type 0 (None) per scanline
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + _png_chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------
# PE files
# --------------------------------------------------------------------------

_LAUNCHER_REL = Path("_vendor") / "distlib" / "t64.exe"


def _pip_dirs_of_other_pythons() -> Iterator[Path]:
    seen: set[str] = set()
    for name in ("python3", "python", "python3.12", "python3.11", "python3.10"):
        exe = shutil.which(name)
        if not exe or os.path.realpath(exe) in seen:
            continue
        seen.add(os.path.realpath(exe))
        try:
            proc = subprocess.run(
                [
                    exe,
                    "-c",
                    "import importlib.util as u; s = u.find_spec('pip'); "
                    "print(s.submodule_search_locations[0] if s else '')",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        line = proc.stdout.strip()
        if proc.returncode == 0 and line:
            yield Path(line)


def find_distlib_launcher() -> Path:
    """Locate pip's vendored distlib launcher ``t64.exe``.

    That file is a genuine Windows x64 PE executable with a VERSIONINFO
    resource, which makes it a convenient stand-in for Windows binaries.
    Looks in the project's ``.venv`` first, then in the running
    interpreter's pip, then in the pip of any Python found on PATH.
    """
    candidates: list[Path] = []
    venv = Path(__file__).resolve().parent.parent / ".venv"
    candidates += sorted(venv.glob("lib/python3*/site-packages/pip")) + sorted(
        venv.glob("Lib/site-packages/pip")
    )
    spec = importlib.util.find_spec("pip")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    for pip_dir in candidates:
        launcher = pip_dir / _LAUNCHER_REL
        if launcher.is_file():
            return launcher
    for pip_dir in _pip_dirs_of_other_pythons():
        launcher = pip_dir / _LAUNCHER_REL
        if launcher.is_file():
            return launcher
    raise GuestImageError(
        "pip's distlib launcher t64.exe was not found in any Python (distribution-packaged "
        "pip, e.g. Debian's python3-pip, drops it: use a virtualenv's pip)"
    )


def make_efi_stub() -> bytes:
    """Return a minimal, well-formed x86-64 PE32+ EFI application.

    Its entry point is ``xor eax, eax; ret`` (returns EFI_SUCCESS); the
    optional header's Subsystem is 10 (EFI application).
    """
    file_align, sect_align = 0x200, 0x1000
    code = b"\x31\xc0\xc3"  # xor eax, eax ; ret
    n_dirs = 16
    opt_size = 24 + 88 + 8 * n_dirs
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack(
        "<4sHHIIIHH",
        b"PE\0\0",
        0x8664,  # Machine: AMD64
        1,  # NumberOfSections
        0,  # TimeDateStamp
        0,
        0,
        opt_size,
        0x0022,  # EXECUTABLE_IMAGE | LARGE_ADDRESS_AWARE
    )
    opt = struct.pack(
        "<HBBIIIII",
        0x20B,  # PE32+
        14,
        0,
        file_align,  # SizeOfCode
        0,
        0,
        sect_align,  # AddressOfEntryPoint
        sect_align,  # BaseOfCode
    )
    opt += struct.pack(
        "<QIIHHHHHHIIIIHHQQQQII",
        0x10000000,  # ImageBase
        sect_align,
        file_align,
        0, 0, 0, 0, 0, 0,  # OS / image / subsystem versions
        0,  # Win32VersionValue
        2 * sect_align,  # SizeOfImage
        file_align,  # SizeOfHeaders
        0,  # CheckSum
        10,  # Subsystem: EFI_APPLICATION
        0,  # DllCharacteristics
        0x100000, 0x1000, 0x100000, 0x1000,  # stack/heap reserve/commit
        0,  # LoaderFlags
        n_dirs,
    )  # fmt: skip
    opt += bytes(8 * n_dirs)
    section = struct.pack(
        "<8sIIIIIIHHI",
        b".text",
        len(code),
        sect_align,
        file_align,
        file_align,
        0,
        0,
        0,
        0,
        0x60000020,  # CODE | EXECUTE | READ
    )
    header = bytes(dos) + coff + opt + section
    header += bytes(file_align - len(header))
    return header + code + bytes(file_align - len(code))


# --------------------------------------------------------------------------
# file systems
# --------------------------------------------------------------------------


@contextmanager
def _ntfs3g_mount(image: Path, mountpoint: Path) -> Iterator[Path]:
    """Mount an NTFS image file read-write with ntfs-3g (FUSE) for the block.

    ntfs-3g runs in the foreground (``no_detach``) as our child, so after the
    unmount we can wait for it to finish writing the volume back.
    """
    exe = _require("ntfs-3g")
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [exe, "-o", "no_detach", str(image), str(mountpoint)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def log_text() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise GuestImageError(
                    f"ntfs-3g could not mount {image.name} "
                    f"(exit status {proc.returncode}; FUSE needs /dev/fuse and either "
                    f"root or a setuid-root ntfs-3g):\n{log_text()}"
                )
            if time.monotonic() > deadline:
                raise GuestImageError(f"timed out waiting for ntfs-3g to mount {image.name}")
            time.sleep(0.01)
        yield mountpoint
    finally:
        try:
            if os.path.ismount(mountpoint):
                unmount_errors = []
                for cmd in (["fusermount", "-u"], ["fusermount3", "-u"], ["umount"]):
                    if shutil.which(cmd[0]) is None:
                        continue
                    r = subprocess.run(
                        [*cmd, str(mountpoint)], capture_output=True, text=True, check=False
                    )
                    if r.returncode == 0:
                        break
                    unmount_errors.append(r.stderr.strip())
                else:
                    proc.terminate()
                    proc.wait(timeout=30)
                    raise GuestImageError(f"could not unmount {mountpoint}: {unmount_errors}")
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise GuestImageError("ntfs-3g did not exit after unmount") from None
            if proc.returncode not in (0, None):
                raise GuestImageError(
                    f"ntfs-3g exited with status {proc.returncode}:\n{log_text()}"
                )
        finally:
            log.close()


def build_ntfs_volume(
    out: Path,
    size: int,
    files: Mapping[str, bytes],
    label: str,
    partition_start_sector: int = 0,
    volume_serial: int | None = None,
) -> dict[str, str]:
    """Create an NTFS file system image of ``size`` bytes at ``out``.

    ``files`` maps relative paths (``/`` separated, e.g. ``Boot/BCD``) to
    contents; parent directories are created.  ``partition_start_sector`` is
    recorded in the boot sector ("hidden sectors"), as Windows expects, with
    a 255-head/63-sector geometry, 512-byte sectors and 4 KiB clusters.
    ``volume_serial`` (64-bit) replaces mkntfs's random serial number, which
    is seeded from the current second and so repeats between volumes.
    Returns ``{"/path": sha256}`` of the files written.
    """
    out = Path(out)
    _new_sparse_file(out, size)
    _run(
        [
            "mkntfs", "-q", "-Q", "-F",
            "-s", str(SECTOR), "-c", "4096",
            "-p", str(partition_start_sector), "-H", "255", "-S", "63",
            "-L", label,
            str(out),
        ]
    )  # fmt: skip
    if volume_serial is not None:
        _set_ntfs_volume_serial(out, volume_serial)
    digests: dict[str, str] = {}
    if not files:
        return digests
    with tempfile.TemporaryDirectory(prefix=".ntfs-mnt-", dir=out.parent) as tmp:
        with _ntfs3g_mount(out, Path(tmp) / "mnt") as mnt:
            for rel, data in files.items():
                rel = _check_relpath(rel)
                dest = mnt.joinpath(*rel.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                digests["/" + rel] = _sha256(data)
    return digests


def _set_ntfs_volume_serial(image: Path, serial: int) -> None:
    """Patch the serial number in the boot sector and in its backup copy.

    mkntfs puts the backup boot sector in the volume's last sector; the
    boot sector has no checksum (its checksum field is unused and zero).
    """
    if not 0 <= serial < 1 << 64:
        raise ValueError("volume_serial must be a 64-bit value")
    size = image.stat().st_size
    with open(image, "r+b") as f:
        for offset in (0, size - SECTOR):
            f.seek(offset)
            if f.read(11)[3:] != b"NTFS    ":
                raise GuestImageError(f"no NTFS boot sector at offset {offset} of {image}")
            f.seek(offset + 0x48)
            f.write(struct.pack("<Q", serial))


def _ntfs_volume_serial(image: Path) -> str:
    with open(image, "rb") as f:
        boot = f.read(SECTOR)
    if boot[3:11] != b"NTFS    ":
        raise GuestImageError(f"{image} has no NTFS boot sector")
    return f"{struct.unpack_from('<Q', boot, 0x48)[0]:016X}"


def _build_fat32_volume(
    out: Path,
    size: int,
    files: Mapping[str, bytes],
    *,
    label: str | None,
    volume_id: int,
    hidden_sectors: int,
) -> dict[str, str]:
    """FAT32 image via mkfs.vfat, populated with mtools (no mount needed)."""
    out = Path(out)
    _new_sparse_file(out, size)
    cmd = [
        "mkfs.vfat", "-F", "32", "-S", str(SECTOR), "-s", "1",
        "-g", "255/63", "-h", str(hidden_sectors), "-i", f"{volume_id:08X}",
    ]  # fmt: skip
    if label:
        cmd += ["-n", label]
    _run([*cmd, str(out)])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    digests: dict[str, str] = {}
    made: set[str] = set()
    with tempfile.TemporaryDirectory(prefix=".fat-src-", dir=out.parent) as tmp:
        for i, (rel, data) in enumerate(files.items()):
            rel = _check_relpath(rel)
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(parts[:depth])
                if d not in made:
                    _run(["mmd", "-i", str(out), "::/" + d], env=env)
                    made.add(d)
            src = Path(tmp) / f"f{i}"
            src.write_bytes(data)
            _run(["mcopy", "-i", str(out), "-o", str(src), "::/" + rel], env=env)
            digests["/" + rel] = _sha256(data)
    return digests


def _build_ext4_volume(
    out: Path,
    size: int,
    files: Mapping[str, bytes | tuple[bytes, int]],
    *,
    fs_uuid: str,
    label: str | None = None,
    dirs: tuple[str, ...] = (),
    symlinks: Mapping[str, str] | None = None,
    dir_modes: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """ext4 image populated from a staging directory with ``mkfs.ext4 -d``.

    ``files`` values are contents or ``(contents, mode)``.  All inodes end up
    owned by root even when run by an ordinary user.
    """
    out = Path(out)
    dir_modes = dict(dir_modes or {})
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".ext4-src-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        os.chmod(root, 0o755)
        for d in dirs:
            (root / _check_relpath(d)).mkdir(parents=True, exist_ok=True)
        for rel, value in files.items():
            data, mode = value if isinstance(value, tuple) else (value, 0o644)
            rel = _check_relpath(rel)
            dest = root.joinpath(*rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            os.chmod(dest, mode)
            digests["/" + rel] = _sha256(data)
        for rel, target in (symlinks or {}).items():
            dest = root.joinpath(*_check_relpath(rel).split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, dest)
        all_paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                rel = str((Path(dirpath) / name).relative_to(root))
                os.chmod(Path(dirpath) / name, dir_modes.get(rel, 0o755))
            for name in dirnames + filenames:
                all_paths.append("/" + str((Path(dirpath) / name).relative_to(root)))
        _new_sparse_file(out, size)
        cmd = [
            "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256",
            "-U", fs_uuid, "-E", "root_owner=0:0", "-d", str(root),
        ]  # fmt: skip
        if label:
            cmd += ["-L", label]
        _run([*cmd, str(out)])
    if os.geteuid() != 0 and all_paths:
        # mkfs.ext4 -d copies the builder's uid/gid; a distro's files are root's
        script = "".join(f'sif "{p}" uid 0\nsif "{p}" gid 0\n' for p in all_paths)
        with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".debugfs") as f:
            f.write(script)
            f.flush()
            _run(["debugfs", "-w", "-f", f.name, str(out)])
    return digests


# --------------------------------------------------------------------------
# Windows disk
# --------------------------------------------------------------------------

_IISSTART_HTM = b"""<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" \
"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1" />
<title>IIS Windows Server</title>
<style type="text/css">
body { color:#000000; background-color:#0072C6; margin:0; }
#container { margin-left:auto; margin-right:auto; text-align:center; }
a img { border:none; }
</style>
</head>
<body>
<div id="container">
<a href="http://go.microsoft.com/fwlink/?linkid=66138&amp;clcid=0x409">\
<img src="Welcome.png" alt="IIS" width="960" height="600" /></a>
</div>
</body>
</html>
""".replace(b"\n", b"\r\n")


def _placeholder(name: str, size: int) -> bytes:
    """Deterministic, non-zero filler for files whose content does not matter."""
    head = f"vhdfs test fixture: placeholder for {name}\r\n".encode()
    seed = hashlib.sha256(name.encode()).digest()
    body = bytearray()
    counter = 0
    while len(head) + len(body) < size:
        body += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    return (head + bytes(body))[:size]


def build_windows_disk(
    out: Path,
    size: int = 256 * MiB,
    welcome_png: bytes | None = None,
    agent: bool = True,
    agent_on_system_partition: bool = False,
    *,
    bcd: bytes | None = None,
    system_hive: bytes | None = None,
    system_size: int = 32 * MiB,
    disk_signature: int = DEFAULT_DISK_SIGNATURE,
    extra_files: Mapping[int, Mapping[str, bytes]] | None = None,
) -> dict:
    """Build a Windows-style MBR disk image at ``out`` (sparse raw file).

    Partition 1: NTFS "System Reserved", active, type 0x07, ``system_size``
    bytes at 1 MiB, holding ``bootmgr`` and ``Boot/BCD`` (content ``bcd``, by
    default a real BCD registry hive whose default entry boots partition 2 of
    this disk, by disk signature and offset, see tools/bcdstore.py).
    Partition 2: NTFS "Windows", type 0x07, the rest of the disk, holding
    ``Windows/System32/winload.exe`` (pip's t64.exe),
    ``Windows/System32/config/SYSTEM`` (``system_hive`` or a placeholder),
    ``inetpub/wwwroot/Welcome.png`` and ``iisstart.htm`` and, if ``agent``,
    ``WindowsAzure/GuestAgent_2.7.41491.1010_2023-01-01_000000/
    WindowsAzureGuestAgent.exe`` (pip's t64.exe) -- on partition 1 instead if
    ``agent_on_system_partition``.  ``extra_files`` maps partition number to
    more ``{relative path: bytes}``.

    Returns the layout: ``{"disk": {...}, "partitions": [...], "files":
    {"<partition number>:/<path>": sha256}}``.
    """
    out = Path(out)
    size = _align_down(size, SECTOR)
    if not 0 <= disk_signature <= 0xFFFFFFFF:
        raise ValueError("disk_signature must be a 32-bit value")
    p1_start = ALIGN
    p1_size = _align_down(system_size, ALIGN)
    p2_start = p1_start + p1_size
    p2_size = _align_down(size - p2_start, ALIGN)
    if p1_size < 8 * MiB or p2_size < 16 * MiB:
        raise ValueError(f"disk of {size} bytes is too small for this layout")

    launcher = find_distlib_launcher().read_bytes()
    if welcome_png is None:
        welcome_png = make_png(320, 200, seed=2012)
    system_files: dict[str, bytes] = {
        "bootmgr": _placeholder("bootmgr", 16 * KiB),
        "Boot/BCD": bcd if bcd is not None else build_mbr_bcd(disk_signature, p2_start),
    }
    windows_files: dict[str, bytes] = {
        "Windows/System32/winload.exe": launcher,
        "Windows/System32/config/SYSTEM": (
            system_hive if system_hive is not None else _placeholder("SYSTEM hive", 8 * KiB)
        ),
        "inetpub/wwwroot/iisstart.htm": _IISSTART_HTM,
        "inetpub/wwwroot/Welcome.png": welcome_png,
    }
    if agent:
        target = system_files if agent_on_system_partition else windows_files
        target[f"{WINDOWS_AGENT_DIR}/WindowsAzureGuestAgent.exe"] = launcher
    for number, extra in (extra_files or {}).items():
        {1: system_files, 2: windows_files}[number].update(extra)

    table = (
        "label: dos\n"
        f"label-id: 0x{disk_signature:08x}\n"
        "unit: sectors\n\n"
        f"start={p1_start // SECTOR}, size={p1_size // SECTOR}, "
        f"type={MBR_TYPE_NTFS:x}, bootable\n"
        f"start={p2_start // SECTOR}, size={p2_size // SECTOR}, type={MBR_TYPE_NTFS:x}\n"
    )
    layout_parts = []
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".guestimage-", dir=out.parent) as tmp:
        pieces = []
        specs = [
            (1, p1_start, p1_size, "System Reserved", True, system_files),
            (2, p2_start, p2_size, "Windows", False, windows_files),
        ]
        for number, start, psize, label, active, content in specs:
            part_file = Path(tmp) / f"part{number}.ntfs"
            serial = int.from_bytes(
                hashlib.sha256(f"{disk_signature:08x}:{number}".encode()).digest()[:8], "little"
            )
            digests = build_ntfs_volume(
                part_file, psize, content, label, start // SECTOR, volume_serial=serial
            )
            files.update({f"{number}:{p}": h for p, h in digests.items()})
            layout_parts.append(
                {
                    "number": number,
                    "start": start,
                    "size": psize,
                    "type": f"0x{MBR_TYPE_NTFS:02x}",
                    "fs": "ntfs",
                    "label": label,
                    "active": active,
                    "serial": _ntfs_volume_serial(part_file),
                }
            )
            pieces.append((start, part_file))
        _assemble(out, size, table, pieces)
    return {
        "path": str(out),
        "disk": {"size": size, "label": "dos", "signature": f"0x{disk_signature:08x}"},
        "partitions": layout_parts,
        "files": files,
    }


# --------------------------------------------------------------------------
# Linux disk
# --------------------------------------------------------------------------

_OS_RELEASE = b"""PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

_WAAGENT_CONF = b"""#
# Microsoft Azure Linux Agent Configuration
#

# Enable extension handling. Do not disable this unless you do not need password reset,
# backup, monitoring, or any extension handling whatsoever.
Extensions.Enabled=y

# Which provisioning agent to use. Supported values are "auto" (default), "waagent",
# "cloud-init", or "disabled".
Provisioning.Agent=auto

# Password authentication for root account will be unavailable.
Provisioning.DeleteRootPassword=y

# Generate fresh host key pair.
Provisioning.RegenerateSshHostKeyPair=y

# Supported values are "rsa", "dsa", "ecdsa", "ed25519", and "auto".
Provisioning.SshHostKeyPairType=auto

# Monitor host name changes and publish changes via DHCP requests.
Provisioning.MonitorHostName=y

# Format if unformatted. If 'n', resource disk will not be mounted.
ResourceDisk.Format=y

# File system on the resource disk
ResourceDisk.Filesystem=ext4

# Mount point for the resource disk
ResourceDisk.MountPoint=/mnt/resource

# Create and use swapfile on resource disk.
ResourceDisk.EnableSwap=n

# Size of the swapfile.
ResourceDisk.SwapSizeMB=0

# Enable verbose logging (y|n)
Logs.Verbose=n

# Root device timeout in seconds.
OS.RootDeviceScsiTimeout=300

# Enable RDMA management and set up, should only be used in HPC images
# OS.EnableRDMA=y

# Allow fallback to HTTP if HTTPS is unavailable
OS.AllowHTTP=n

# Add firewall rules to protect access to Azure host node services
OS.EnableFirewall=y

# Enable checking RDMA driver version and update
# OS.CheckRdmaDriver=y

# Enable or disable goal state processing auto-update, default is enabled
AutoUpdate.Enabled=y
"""

_WAAGENT_SERVICE = b"""[Unit]
Description=Azure Linux Agent
Wants=network-online.target sshd.service sshd-keygen.service
After=network-online.target
ConditionFileIsExecutable=/usr/sbin/waagent
ConditionPathExists=/etc/waagent.conf

[Service]
Type=simple
ExecStart=/usr/sbin/waagent -daemon
Restart=always
RestartSec=5
Slice=azure.slice
CPUAccounting=yes
MemoryAccounting=yes

[Install]
WantedBy=multi-user.target
"""

_WAAGENT_SCRIPT = b"""#!/usr/bin/python3
#
# Azure Linux Agent
#
# Copyright 2015 Microsoft Corporation
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# Requires Python 2.6 and Openssl 1.0+
#

import os
import sys

if sys.version_info[0] == 2:
    import imp  # pylint: disable=import-error
else:
    import importlib  # pylint: disable=unused-import

if __name__ == '__main__' :
    import azurelinuxagent.agent as agent
    \"\"\"
    Invoke main method of agent
    \"\"\"
    agent.main()

if __name__ == 'waagent':
    \"\"\"
    Load waagent2.0 to support old version of extensions
    \"\"\"
    if sys.version_info[0] == 3:
        raise ImportError("waagent2.0 doesn't support python3")
    bin_path = os.path.dirname(os.path.abspath(__file__))
    agent20_path = os.path.join(bin_path, "waagent2.0")
    if not os.path.isfile(agent20_path):
        raise ImportError("Can't load waagent")
    agent20 = imp.load_source('waagent', agent20_path)
    __all__ = dir(agent20)
"""


def _waagent_version_py(version: str) -> bytes:
    return f'''# Copyright 2019 Microsoft Corporation
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
#
# Requires Python 2.6+ and Openssl 1.0+
#
# (vhdfs test fixture: trimmed copy of the installed module; the version
# constants below are what inspection tools read.)

import os
import re
import sys

AGENT_NAME = "WALinuxAgent"
AGENT_LONG_NAME = "Azure Linux Agent"
AGENT_VERSION = '{version}'
AGENT_LONG_VERSION = "{{0}}-{{1}}".format(AGENT_NAME, AGENT_VERSION)
AGENT_DESCRIPTION = """
The Azure Linux Agent supports the provisioning and running of Linux
VMs in the Azure cloud. This package should be installed on Linux disk
images that are built to run in the Azure environment.
"""

AGENT_DIR_GLOB = "{{0}}-*".format(AGENT_NAME)
AGENT_PKG_GLOB = "{{0}}-*.zip".format(AGENT_NAME)

AGENT_PATTERN = "{{0}}-(.*)".format(AGENT_NAME)
AGENT_NAME_PATTERN = re.compile(AGENT_PATTERN)
AGENT_PKG_PATTERN = re.compile(AGENT_PATTERN+r"\\.zip")
AGENT_DIR_PATTERN = re.compile(".*/{{0}}".format(AGENT_PATTERN))

# The execution mode of the VM - IAAS or PAAS. Linux VMs are only executed in IAAS mode.
AGENT_EXECUTION_MODE = "IAAS"

PY_VERSION = sys.version_info
PY_VERSION_MAJOR = sys.version_info[0]
PY_VERSION_MINOR = sys.version_info[1]
PY_VERSION_MICRO = sys.version_info[2]
'''.encode()


def _waagent_pkg_info(version: str) -> bytes:
    return f"""Metadata-Version: 2.1
Name: WALinuxAgent
Version: {version}
Summary: Microsoft Azure Linux Agent
Home-page: https://github.com/Azure/WALinuxAgent
Author: Microsoft Corporation
Author-email: walinuxagent@microsoft.com
License: Apache License Version 2.0
Platform: UNKNOWN
License-File: LICENSE.txt

The Azure Linux Agent supports the provisioning and running of Linux
VMs in the Azure cloud. This package should be installed on Linux disk
images that are built to run in the Azure environment.

""".encode()


def _grub_cfg(root_uuid: str, kernel: str) -> bytes:
    cmdline = (
        f"root=UUID={root_uuid} ro console=tty0 console=ttyS0,115200n8 "
        "earlyprintk=ttyS0,115200 rootdelay=300 quiet"
    )
    return f"""#
# DO NOT EDIT THIS FILE
#
# It is automatically generated by grub-mkconfig using templates
# from /etc/grub.d and settings from /etc/default/grub
#

### BEGIN /etc/grub.d/00_header ###
set default="0"
set timeout=5
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root {root_uuid}
### END /etc/grub.d/00_header ###

### BEGIN /etc/grub.d/10_linux ###
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os \
$menuentry_id_option 'gnulinux-simple-{root_uuid}' {{
	load_video
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root {root_uuid}
	echo	'Loading Linux {kernel} ...'
	linux	/boot/vmlinuz-{kernel} {cmdline}
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-{kernel}
}}
### END /etc/grub.d/10_linux ###
""".encode()


def build_linux_disk(
    out: Path,
    size: int = 256 * MiB,
    waagent_version: str = DEFAULT_WAAGENT_VERSION,
    *,
    root_uuid: str = DEFAULT_ROOT_UUID,
    esp_size: int = 40 * MiB,
    esp_volume_id: int = DEFAULT_ESP_VOLUME_ID,
    disk_guid: str = DEFAULT_LINUX_DISK_GUID,
    extra_files: Mapping[str, bytes] | None = None,
) -> dict:
    """Build a Debian-12-style GPT disk image at ``out`` (sparse raw file).

    Partition 1: EFI system partition (FAT32, ``esp_size`` bytes at 1 MiB)
    with ``EFI/BOOT/BOOTX64.EFI`` (a minimal PE32+ EFI application) and
    ``EFI/debian/grub.cfg`` pointing at the root file system by UUID.
    Partition 2: ext4 root (UUID ``root_uuid``) with ``/etc/os-release``,
    ``/etc/fstab``, ``/boot/vmlinuz-6.1.0-18-amd64``, ``/boot/grub/grub.cfg``
    and WALinuxAgent ``waagent_version`` as the distro package installs it
    (``/usr/sbin/waagent``, ``/etc/waagent.conf``,
    ``/lib/systemd/system/walinuxagent.service``,
    ``/usr/lib/python3/dist-packages/azurelinuxagent/...`` and
    ``.../WALinuxAgent-<version>.egg-info/``).  ``extra_files`` adds more
    root-fs files (relative paths).

    Returns the same kind of layout dict as :func:`build_windows_disk`.
    """
    out = Path(out)
    size = _align_down(size, SECTOR)
    root_uuid = str(uuid.UUID(root_uuid))
    disk_guid = str(uuid.UUID(disk_guid)).upper()
    p1_start = ALIGN
    p1_size = _align_down(esp_size, ALIGN)
    p2_start = p1_start + p1_size
    # keep the backup GPT (33 sectors) outside the last partition
    p2_size = _align_down(size - 33 * SECTOR - p2_start, ALIGN)
    if p1_size < 34 * MiB:
        raise ValueError("esp_size must be at least 34 MiB for FAT32 with 512-byte clusters")
    if p2_size < 16 * MiB:
        raise ValueError(f"disk of {size} bytes is too small for this layout")
    esp_uuid = f"{esp_volume_id >> 16:04X}-{esp_volume_id & 0xFFFF:04X}"

    esp_files = {
        "EFI/BOOT/BOOTX64.EFI": make_efi_stub(),
        "EFI/debian/grub.cfg": (
            f"search.fs_uuid {root_uuid} root hd0,gpt2 \n"
            "set prefix=($root)'/boot/grub'\n"
            "configfile $prefix/grub.cfg\n"
        ).encode(),
    }
    kernel = DEBIAN_KERNEL
    dist = "usr/lib/python3/dist-packages"
    egg = f"{dist}/WALinuxAgent-{waagent_version}.egg-info"
    root_files: dict[str, bytes | tuple[bytes, int]] = {
        "etc/os-release": _OS_RELEASE,
        "etc/debian_version": b"12.5\n",
        "etc/hostname": b"debian\n",
        "etc/fstab": (
            "# /etc/fstab: static file system information.\n"
            "#\n"
            "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
            f"UUID={root_uuid} /               ext4    errors=remount-ro 0       1\n"
            f"UUID={esp_uuid}  /boot/efi       vfat    umask=0077      0       1\n"
        ).encode(),
        f"boot/vmlinuz-{kernel}": _placeholder(f"vmlinuz-{kernel}", 64 * KiB),
        f"boot/initrd.img-{kernel}": _placeholder(f"initrd.img-{kernel}", 32 * KiB),
        f"boot/config-{kernel}": b"# Linux/x86 6.1.76 Kernel Configuration\nCONFIG_64BIT=y\n",
        "boot/grub/grub.cfg": (_grub_cfg(root_uuid, kernel), 0o444),
        # WALinuxAgent, laid out as the distro package installs it
        "usr/sbin/waagent": (_WAAGENT_SCRIPT, 0o755),
        "etc/waagent.conf": _WAAGENT_CONF,
        "lib/systemd/system/walinuxagent.service": _WAAGENT_SERVICE,
        f"{dist}/azurelinuxagent/__init__.py": b"",
        f"{dist}/azurelinuxagent/agent.py": (
            b'"""Azure Linux Agent entry point (vhdfs test fixture stub)."""\n\n\n'
            b"def main(args=None):\n    raise SystemExit('test fixture: not a real agent')\n"
        ),
        f"{dist}/azurelinuxagent/common/__init__.py": b"",
        f"{dist}/azurelinuxagent/common/version.py": _waagent_version_py(waagent_version),
        f"{egg}/PKG-INFO": _waagent_pkg_info(waagent_version),
        f"{egg}/dependency_links.txt": b"\n",
        f"{egg}/top_level.txt": b"azurelinuxagent\ntests\n",
        f"{egg}/SOURCES.txt": (
            b"LICENSE.txt\nMANIFEST.in\nREADME.md\nsetup.py\nbin/waagent\nbin/waagent2.0\n"
            b"azurelinuxagent/__init__.py\nazurelinuxagent/agent.py\n"
            b"azurelinuxagent/common/__init__.py\nazurelinuxagent/common/version.py\n"
        ),
    }
    root_files.update(extra_files or {})
    dirs = ("boot/efi", "dev", "proc", "sys", "run", "tmp", "home", "root", "var/lib/waagent")
    symlinks = {
        "vmlinuz": f"boot/vmlinuz-{kernel}",
        "initrd.img": f"boot/initrd.img-{kernel}",
        "etc/systemd/system/multi-user.target.wants/walinuxagent.service": (
            "/lib/systemd/system/walinuxagent.service"
        ),
    }

    table = (
        "label: gpt\n"
        f"label-id: {disk_guid}\n"
        "unit: sectors\n"
        "first-lba: 2048\n\n"
        f"start={p1_start // SECTOR}, size={p1_size // SECTOR}, type={GPT_TYPE_ESP}, "
        f'uuid={DEFAULT_ESP_PARTUUID}, name="EFI System Partition"\n'
        f"start={p2_start // SECTOR}, size={p2_size // SECTOR}, type={GPT_TYPE_LINUX_DATA}, "
        f"uuid={DEFAULT_ROOT_PARTUUID}\n"
    )
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".guestimage-", dir=out.parent) as tmp:
        esp_file = Path(tmp) / "part1.vfat"
        root_file = Path(tmp) / "part2.ext4"
        esp_digests = _build_fat32_volume(
            esp_file,
            p1_size,
            esp_files,
            label=None,
            volume_id=esp_volume_id,
            hidden_sectors=p1_start // SECTOR,
        )
        root_digests = _build_ext4_volume(
            root_file,
            p2_size,
            root_files,
            fs_uuid=root_uuid,
            dirs=dirs,
            symlinks=symlinks,
            dir_modes={"tmp": 0o1777, "root": 0o700, "boot/efi": 0o700},
        )
        files.update({f"1:{p}": h for p, h in esp_digests.items()})
        files.update({f"2:{p}": h for p, h in root_digests.items()})
        _assemble(out, size, table, [(p1_start, esp_file), (p2_start, root_file)])
    return {
        "path": str(out),
        "disk": {"size": size, "label": "gpt", "guid": disk_guid},
        "partitions": [
            {
                "number": 1,
                "start": p1_start,
                "size": p1_size,
                "type": GPT_TYPE_ESP,
                "partuuid": DEFAULT_ESP_PARTUUID,
                "fs": "vfat",
                "label": None,
                "uuid": esp_uuid,
                "active": False,
            },
            {
                "number": 2,
                "start": p2_start,
                "size": p2_size,
                "type": GPT_TYPE_LINUX_DATA,
                "partuuid": DEFAULT_ROOT_PARTUUID,
                "fs": "ext4",
                "label": None,
                "uuid": root_uuid,
                "active": False,
            },
        ],
        "files": files,
        "waagent_version": waagent_version,
    }


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="guestimage.py", description="Build raw guest disk images for vhdfs tests/demo."
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    win = sub.add_parser("windows", help="MBR disk: System Reserved + Windows NTFS partitions")
    win.add_argument("out", type=Path)
    win.add_argument("--size", type=parse_size, default=256 * MiB, help="e.g. 256M (default)")
    win.add_argument("--no-agent", dest="agent", action="store_false")
    win.add_argument("--agent-on-system-partition", action="store_true")
    win.add_argument("--png-seed", type=int, default=None, help="seed of Welcome.png")
    lin = sub.add_parser("linux", help="GPT disk: EFI system partition + ext4 root")
    lin.add_argument("out", type=Path)
    lin.add_argument("--size", type=parse_size, default=256 * MiB, help="e.g. 256M (default)")
    lin.add_argument("--waagent-version", default=DEFAULT_WAAGENT_VERSION)
    args = parser.parse_args(argv)
    try:
        if args.kind == "windows":
            png = None if args.png_seed is None else make_png(320, 200, args.png_seed)
            layout = build_windows_disk(
                args.out,
                args.size,
                welcome_png=png,
                agent=args.agent,
                agent_on_system_partition=args.agent_on_system_partition,
            )
        else:
            layout = build_linux_disk(args.out, args.size, waagent_version=args.waagent_version)
    except (GuestImageError, ValueError) as e:
        print(f"guestimage: error: {e}", file=sys.stderr)
        return 1
    json.dump(layout, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
