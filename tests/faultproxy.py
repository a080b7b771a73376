"""A small threaded HTTP proxy on 127.0.0.1 in front of Azurite, for upload tests and benchmarks.

It counts what reaches the server (Put Page requests and their bytes, from the
``x-ms-page-write``/``x-ms-range`` headers), records any write larger than 4 MiB or not 512-aligned,
and can inject faults on a share of requests: connection resets, 500, 503 ServerBusy, 429,
delays, 403 (a hard failure); and cap the upload bandwidth (one shared token bucket), to stand
in for an on-prem uplink.
Faults are decided before forwarding, so a faulted request never reaches the server.

Subclasses (tests/mddouble.py: a strict managed-disk endpoint) change behaviour through three
hooks: :meth:`FaultProxy.intercept` answers a request itself (a refusal), :meth:`upstream`
rewrites what is forwarded, :meth:`transform` rewrites the server's answer.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_PUT_PAGE = 4 * 1024 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server",
        "proxy-connection", "upgrade", "te", "trailer"}


@dataclass
class Faults:
    """Shares (0..1) of requests that get each fault; ``scope`` 'put_page' or 'all'."""

    reset: float = 0.0
    error500: float = 0.0
    error503: float = 0.0
    error429: float = 0.0
    error403: float = 0.0  # a hard failure: not retried
    delay: float = 0.0
    delay_s: float = 0.2
    bandwidth_bps: float | None = None  # bits per second of request bodies, all connections
    scope: str = "put_page"
    seed: int = 1234
    refuse_leases: bool = False  # every lease request gets 403, as where leases are unavailable
    delay_lease_s: float = 0.0  # every lease acquisition waits this long before it is forwarded


@dataclass
class Request:
    method: str
    path: str  # with the query
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    payload: bytes


def error_reply(status: int, code: str, message: str = "refused by the test double") -> Reply:
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    return Reply(status, [("x-ms-error-code", code), ("Content-Type", "application/xml")], body)


@dataclass
class Counters:
    requests: int = 0
    put_pages: int = 0
    put_page_bytes: int = 0
    writes: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) applied
    violations: list[str] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)


class _Throttle:
    """Paces body bytes of all connections to ``bps`` bits per second."""

    def __init__(self, bps: float) -> None:
        self.rate = bps / 8.0
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def consume(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class FaultProxy:
    """``with FaultProxy(upstream_url) as proxy: proxy.url`` is the same account on the proxy."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.path = parts.path
        self.faults = faults or Faults()
        self.counters = Counters()
        self.lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._active = 0
        self._throttle: _Throttle | None = None
        self.set_faults(self.faults)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._throttle = _Throttle(faults.bandwidth_bps) if faults.bandwidth_bps else None

    def reset_counters(self) -> Counters:
        with self.lock:
            old, self.counters = self.counters, Counters()
        return old

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being handled (a killed client's last writes land)."""
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.02)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hooks for subclasses ----------------------------------------------------------
    def intercept(self, req: Request) -> Reply | None:
        """Answer ``req`` without forwarding it (None: forward)."""
        return None

    def upstream(self, req: Request) -> tuple[str, list[tuple[str, str]]]:
        """The path and headers forwarded for ``req``."""
        return req.path, list(req.headers.items())

    def transform(self, req: Request, reply: Reply) -> Reply:
        """The answer sent back for ``req`` given the server's ``reply``."""
        return reply

    def _pick_fault(self, is_put_page: bool) -> str | None:
        f = self.faults
        if f.scope == "put_page" and not is_put_page:
            return None
        with self.lock:
            x = self._rng.random()
        for name, share in (("reset", f.reset), ("500", f.error500), ("503", f.error503),
                            ("429", f.error429), ("403", f.error403), ("delay", f.delay)):
            if x < share:
                return name
            x -= share
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, format: str, *args: object) -> None:
                pass

            def finish(self) -> None:
                if self.upstream is not None:
                    self.upstream.close()
                super().finish()

            def do_GET(self) -> None:
                self._proxy()

            do_PUT = do_HEAD = do_DELETE = do_POST = do_GET

            def _read_body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                chunks, left = [], n
                while left:
                    chunk = self.rfile.read(min(left, 64 * 1024))
                    if not chunk:
                        raise ConnectionError("client went away mid-body")
                    if proxy._throttle is not None:
                        proxy._throttle.consume(len(chunk))
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)

            def _proxy(self) -> None:
                with proxy.lock:
                    proxy._active += 1
                    proxy.counters.requests += 1
                try:
                    self._handle()
                except (ConnectionError, OSError):
                    self.close_connection = True
                finally:
                    with proxy.lock:
                        proxy._active -= 1

            def _handle(self) -> None:
                body = self._read_body()
                req = Request(self.command, self.path,
                              {k.lower(): v for k, v in self.headers.items()}, body)
                own = proxy.intercept(req)
                if own is not None:
                    self._send(req, own)
                    return
                is_pp = (self.command == "PUT" and "comp=page" in self.path
                         and self.headers.get("x-ms-page-write", "").lower() == "update")
                fault = proxy._pick_fault(is_pp)
                if proxy.faults.refuse_leases and "comp=lease" in self.path:
                    fault = "403"
                if fault is not None:
                    with proxy.lock:
                        proxy.counters.injected[fault] = proxy.counters.injected.get(fault, 0) + 1
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault in ("500", "503", "429", "403"):
                    self._error(int(fault))
                    return
                if fault == "delay":
                    time.sleep(proxy.faults.delay_s)
                if (proxy.faults.delay_lease_s and "comp=lease" in self.path
                        and self.headers.get("x-ms-lease-action", "").lower() == "acquire"):
                    time.sleep(proxy.faults.delay_lease_s)
                status, headers, payload = self._forward(req)
                if is_pp and status == 201:
                    self._count_put_page(len(body))
                self._send(req, proxy.transform(req, Reply(status, headers, payload)))

            def _send(self, req: Request, reply: Reply) -> None:
                self.send_response(reply.status)
                for k, v in reply.headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    length = next((v for k, v in reply.headers
                                   if k.lower() == "content-length"), "0")
                    self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(reply.payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.payload)

            def _forward(self, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
                path, headers = proxy.upstream(req)
                body = req.body
                for attempt in range(2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(
                            proxy.upstream_host, proxy.upstream_port, timeout=120)
                    try:
                        self.upstream.putrequest(self.command, path, skip_host=True,
                                                 skip_accept_encoding=True)
                        for k, v in headers:
                            if k.lower() not in ("connection", "proxy-connection", "keep-alive"):
                                self.upstream.putheader(k, v)
                        self.upstream.endheaders(body if body else None)
                        resp = self.upstream.getresponse()
                        payload = resp.read()
                        return resp.status, resp.getheaders(), payload
                    except (http.client.HTTPException, ConnectionError):
                        self.upstream.close()
                        self.upstream = None
                        if attempt:
                            raise
                raise AssertionError("unreachable")

            def _count_put_page(self, body_len: int) -> None:
                rng = self.headers.get("x-ms-range") or self.headers.get("Range") or ""
                m = _RANGE.fullmatch(rng.strip())
                with proxy.lock:
                    c = proxy.counters
                    if m is None:
                        c.violations.append(f"Put Page without a byte range: {rng!r}")
                        return
                    start, end = int(m.group(1)), int(m.group(2))
                    length = end + 1 - start
                    if length > MAX_PUT_PAGE:
                        c.violations.append(f"write of {length} bytes at {start} exceeds 4 MiB")
                    if start % 512 or length % 512:
                        c.violations.append(f"write {start}+{length} is not 512-aligned")
                    if length != body_len:
                        c.violations.append(f"range {rng} but body of {body_len} bytes")
                    c.put_pages += 1
                    c.put_page_bytes += length
                    c.writes.append((start, length))

            def _error(self, status: int) -> None:
                code = {500: "InternalError", 503: "ServerBusy", 429: "TooManyRequests",
                        403: "AuthorizationFailure"}[status]
                self._send(Request(self.command, self.path, {}, b""),
                           error_reply(status, code, "injected by the test proxy"))

        return Handler
