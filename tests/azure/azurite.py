"""A loopback proxy in front of Azurite that injects faults and records requests.

Azurite itself is started by tools/azurite.py (shared with the demo and the benchmark); its
names are re-exported here for the tests.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tools.azurite import ACCOUNT, KEY, Azurite, azurite_binary, connection_string, free_port

__all__ = ["ACCOUNT", "KEY", "Azurite", "FaultProxy", "azurite_binary", "connection_string",
           "free_port"]


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
    header: str | None = None  # a request header (lower case) the request must carry

    def matches(self, method: str, path: str, headers: dict[str, str] | None = None) -> bool:
        return (self.count < 0 or self.hits < self.count) and \
            (self.method is None or self.method == method) and \
            (self.contains is None or self.contains in path) and \
            (self.header is None or self.header in (headers or {}))


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
    most_reads_at_once: int = 0  # ranged GETs in progress at the same time, at most

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._writing = 0
        self._reading = 0
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _take_rule(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, headers):
                    rule.hits += 1
                    return rule
        return None

    def add(self, action: str, count: int = 1, *, method: str | None = None,
            contains: str | None = None, status: int = 503, seconds: float = 0.0,
            header: str | None = None) -> Rule:
        rule = Rule(action, count, method, contains, status, seconds, header=header)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()
            self.most_writes_at_once = self.most_reads_at_once = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request through a FaultProxy (`proxy`, set on a subclass made per proxy)."""

    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        proxy = self.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rule = proxy._take_rule(self.command, self.path,
                                {k.lower(): v for k, v in self.headers.items()})
        seen = Seen(self.command, self.path, len(body),
                    {k.lower(): v for k, v in self.headers.items()}, -1)
        page_write = self.command == "PUT" and "comp=page" in self.path
        ranged_read = self.command == "GET" and "x-ms-range" in seen.headers
        with proxy._lock:
            proxy.seen.append(seen)
            if page_write:
                proxy._writing += 1
                proxy.most_writes_at_once = max(proxy.most_writes_at_once,
                                                proxy._writing)
            if ranged_read:
                proxy._reading += 1
                proxy.most_reads_at_once = max(proxy.most_reads_at_once,
                                               proxy._reading)
        try:
            self._act(rule, seen, body)
        finally:
            with proxy._lock:
                proxy._writing -= page_write
                proxy._reading -= ranged_read

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
        upstream = http.client.HTTPConnection("127.0.0.1", self.proxy.upstream_port,
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
