"""Azurite (the Azure Storage emulator) on 127.0.0.1, and a loopback proxy that injects faults.

Used by tests/azure/conftest.py and by tools/bench/upload.py.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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

    def remove_data(self) -> None:
        shutil.rmtree(self.location, ignore_errors=True)


# ---------------------------------------------------------------------------- fault proxy
@dataclass
class Seen:
    method: str
    path: str  # path and query
    body: int
    headers: dict[str, str]
    answered: int  # status sent back (0: none, the connection is dropped; -1: not yet)


@dataclass
class Rule:
    action: str  # "status" (answer with `status`), "hang" (answer nothing), "delay" (then forward)
    count: int  # how many requests it applies to (-1: all)
    method: str | None = None
    contains: str | None = None  # substring of the path and query
    status: int = 503
    seconds: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.count < 0 or self.hits < self.count) and \
            (self.method is None or self.method == method) and \
            (self.contains is None or self.contains in path)


@dataclass
class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of Azurite: forwards requests, or fails them on rules.

    Shared-key signatures do not cover the Host header, so requests signed for the proxy's
    address are valid upstream.
    """

    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    most_writes_at_once: int = 0  # page writes in progress at the same time, at most

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._writing = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._take_rule(self.command, self.path)
                seen = Seen(self.command, self.path, len(body),
                            {k.lower(): v for k, v in self.headers.items()}, -1)
                page_write = self.command == "PUT" and "comp=page" in self.path
                with proxy._lock:
                    proxy.seen.append(seen)
                    if page_write:
                        proxy._writing += 1
                        proxy.most_writes_at_once = max(proxy.most_writes_at_once,
                                                        proxy._writing)
                try:
                    self._act(rule, seen, body)
                finally:
                    if page_write:
                        with proxy._lock:
                            proxy._writing -= 1

            def _act(self, rule: Rule | None, seen: Seen, body: bytes) -> None:
                if rule is not None and rule.action == "hang":
                    seen.answered = 0
                    time.sleep(rule.seconds)
                    self.close_connection = True
                    return
                if rule is not None and rule.action == "delay":
                    time.sleep(rule.seconds)
                if rule is not None and rule.action == "status":
                    seen.answered = rule.status
                    self._answer_error(rule.status)
                    return
                seen.answered = self._forward(body)

            def _answer_error(self, status: int) -> None:
                code = {403: "AuthorizationFailure", 500: "InternalError",
                        503: "ServerBusy"}.get(status, "InjectedFault")
                payload = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                           f"<Message>injected by the test proxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("x-ms-error-code", code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(0 if self.command == "HEAD" else
                                                       len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes) -> int:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port,
                                                      timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive")}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "keep-alive",
                                               "content-length", "date", "server"):
                            self.send_header(key, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length",
                                         response.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return response.status
                finally:
                    upstream.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def add(self, action: str, count: int = 1, *, method: str | None = None,
            contains: str | None = None, status: int = 503, seconds: float = 0.0) -> Rule:
        rule = Rule(action, count, method, contains, status, seconds)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
