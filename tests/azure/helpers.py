"""Helpers of the Azure tests: the CLI, --stats parsing, chains, the service client."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests.azure.azurite import ACCOUNT, KEY
from vhdfs.create import create_differencing, create_dynamic, parent_info_of
from vhdfs.sources.local import LocalFile
from vhdfs.vhd.layer import Layer

KiB = 1024
MiB = 1024 * KiB


def service(endpoint: str):  # noqa: ANN201 - azure.storage.blob.BlobServiceClient
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": KEY})


def vhdfs(*args: str | os.PathLike[str], env: dict[str, str] | None = None, check: bool = True,
          timeout: float = 300.0, text: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vhdfs", *map(str, args)], capture_output=True,
                          text=text, timeout=timeout, env=env)
    if check and done.returncode:
        raise AssertionError(f"vhdfs {' '.join(map(str, args))} exited {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")
    return done


def stats_of(stderr: str) -> dict[str, int]:
    """The numbers of the `vhdfs: stats:` line (--stats)."""
    line = next(x for x in stderr.splitlines() if x.startswith("vhdfs: stats:"))
    words = line.split()
    out = {"bytes_fetched": int(words[words.index("fetched") + 1]),
           "requests": int(words[words.index("requests;") - 1]),
           "bytes_sent": int(words[words.index("sent") + 1])}
    if "body" in words:
        out["largest_request_body"] = int(words[words.index("body") + 1])
    return out


# ---------------------------------------------------------------------------- chains
def write_layer(path: Path, writes: list[tuple[int, bytes]]) -> None:
    with Layer(LocalFile(path, writable=True), writable=True) as layer:
        for offset, data in writes:
            layer.write(offset, data)


def make_chain(folder: Path, *, size: int = 64 * MiB, seed: int = 1, base_name: str = "base.vhd",
               child_name: str = "child.vhd") -> tuple[Path, Path]:
    """A dynamic base and a differencing child, both with data; the child also zeroes some of
    the base's data (so a flattened upload must not take those sectors from the base).

    Base: 10 MiB of contiguous data at 1 MiB (more than two 4 MiB writes), scattered sectors.
    Child: 3 MiB at 30 MiB, a few sectors, and 64 KiB of zeros over the base's data at 4 MiB.
    """
    rng = random.Random(seed)
    base, child = folder / base_name, folder / child_name
    create_dynamic(base, size)
    write_layer(base, [(1 * MiB, rng.randbytes(10 * MiB)), (40 * MiB, rng.randbytes(512)),
                       (50 * MiB + 4096, rng.randbytes(3 * 512))])
    with Layer(LocalFile(base)) as layer:
        create_differencing(child, parent_info_of(base, layer))
    write_layer(child, [(30 * MiB, rng.randbytes(3 * MiB)), (512, rng.randbytes(1024)),
                        (4 * MiB, bytes(64 * KiB)), (40 * MiB, rng.randbytes(512))])
    return base, child


def flat_disk(image: Path, out: Path, env: dict[str, str]) -> bytes:
    """The chain as `vhdfs convert --to fixed` makes it (data + footer)."""
    vhdfs("convert", image, out, "--to", "fixed", env=env)
    return out.read_bytes()


PAGE = 512


def nonzero_pages(data: bytes) -> int:
    """How many 512-byte pages of `data` hold a non-zero byte (a plain loop: the model)."""
    return sum(1 for at in range(0, len(data), PAGE) if data[at:at + PAGE].count(0) < PAGE)


def short_writes(rng: random.Random, size: int, count: int) -> list[tuple[int, bytes]]:
    """Short writes as a guest makes them: 512 B to 8 KiB, some all zeros, some with zero
    sectors inside, anywhere on the disk."""
    out: list[tuple[int, bytes]] = []
    for _ in range(count):
        sectors = rng.randint(1, 16)
        data = bytearray(rng.randbytes(sectors * PAGE))
        kind = rng.random()
        if kind < 0.15:
            data = bytearray(len(data))
        elif kind < 0.5:
            for s in rng.sample(range(sectors), rng.randint(0, sectors - 1)):
                data[s * PAGE:(s + 1) * PAGE] = bytes(PAGE)
        out.append((rng.randrange(size // PAGE - sectors) * PAGE, bytes(data)))
    return out


def hidden_style_chain(folder: Path, seed: int = 5) -> Path:
    """24 MiB, 512 KiB blocks, three layers of short writes (the chain of the issue)."""
    rng = random.Random(seed)
    size = 24 * MiB
    paths = [folder / "base.vhd", folder / "mid.vhd", folder / "top.vhd"]
    create_dynamic(paths[0], size, 512 * KiB)
    write_layer(paths[0], short_writes(rng, size, 400))
    for parent, child in zip(paths, paths[1:], strict=False):
        with Layer(LocalFile(parent)) as layer:
            create_differencing(child, parent_info_of(parent, layer))
        write_layer(child, short_writes(rng, size, 150))
    return paths[-1]
