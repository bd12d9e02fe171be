"""Azurite (the Azure Storage emulator) on 127.0.0.1: start, stop, restart.

Used by the demo, the Azure tests (tests/azure) and the upload benchmark. Azurite is bound to
127.0.0.1 only, with telemetry off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "devstoreaccount1"
# Azurite's documented development key (public; the same in every emulator).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 60.0


def azurite_binary() -> Path | None:
    """VHDFS_AZURITE, else the copy scripts/setup installs; the blob-only launcher next to it
    when there is one (one port instead of three)."""
    given = os.environ.get("VHDFS_AZURITE")
    path = Path(given) if given else ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite"
    if not path.exists():
        return None
    blob_only = path.with_name("azurite-blob")
    return blob_only if path.name == "azurite" and blob_only.exists() else path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connection_string(endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={endpoint}")


class Azurite:
    """One Azurite blob service: start, stop and start again on the same port and location."""

    def __init__(self, binary: Path, location: Path, *, in_memory: bool = False) -> None:
        self.binary = binary
        self.location = location
        self.in_memory = in_memory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = location / "azurite.log"
        help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                                   timeout=60).stdout
        # Telemetry goes to an outside host; the flag exists from Azurite 3.31 on.
        self.flags = ["--disableTelemetry"] if "--disableTelemetry" in help_text else []
        self.flags += ["--skipApiVersionCheck", "--silent"]
        if in_memory:
            self.flags.append("--inMemoryPersistence")
        self.full = self.binary.name == "azurite"  # blob + queue + table: three ports

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.endpoint)

    def start(self) -> Azurite:
        self.location.mkdir(parents=True, exist_ok=True)
        args = [str(self.binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                *self.flags]
        if not self.in_memory:  # (Azurite refuses --location with --inMemoryPersistence)
            args += ["--location", str(self.location)]
        if self.full:
            args += ["--queueHost", "127.0.0.1", "--queuePort", str(free_port()),
                     "--tableHost", "127.0.0.1", "--tablePort", str(free_port())]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.location)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Azurite exited ({self.proc.returncode}) at start: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{self.port} within "
                           f"{START_TIMEOUT:.0f} s: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def remove_data(self) -> None:
        shutil.rmtree(self.location, ignore_errors=True)
