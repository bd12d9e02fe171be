"""Random 4 KiB reads of one file by N reader processes; prints the total reads per second.

    python -m tools.bench.randread FILE [--readers N] [--seconds S] [--size BYTES]

Each reader opens FILE with O_DIRECT (so a FUSE file system without direct_io cannot answer
from the kernel's page cache) and reads 4 KiB at random 4 KiB-aligned offsets into an
aligned buffer for S seconds.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import random
import time

BLOCK = 4096


def _reader(path: str, size: int, seconds: float, seed: int, results: multiprocessing.Queue) -> None:
    rng = random.Random(seed)
    blocks = size // BLOCK
    buf = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    count = 0
    try:
        deadline = time.perf_counter() + seconds
        while True:
            for _ in range(64):
                if os.preadv(fd, [buf], rng.randrange(blocks) * BLOCK) != BLOCK:
                    raise RuntimeError(f"{path}: short read")
            count += 64
            if time.perf_counter() >= deadline:
                break
    finally:
        os.close(fd)
    results.put(count)


def iops(path: str, readers: int = 1, seconds: float = 5.0, size: int | None = None) -> float:
    """Reads per second of `readers` processes reading 4 KiB at random offsets of `path`."""
    size = size or os.path.getsize(path)
    results: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_reader, args=(path, size, seconds, seed, results))
             for seed in range(readers)]
    start = time.perf_counter()
    for proc in procs:
        proc.start()
    total = sum(results.get(timeout=seconds + 60) for _ in procs)
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"a reader of {path} failed (exit {proc.exitcode})")
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, help="read only the first SIZE bytes")
    args = parser.parse_args()
    print(f"{iops(args.file, args.readers, args.seconds, args.size):.0f}")


if __name__ == "__main__":
    main()
