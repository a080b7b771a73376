"""A strict managed-disk endpoint in front of Azurite: what `az disk grant-access` hands out.

Azurite accepts much that Azure refuses on a managed disk's ``md-....blob.storage.azure.net``
upload URL. This double refuses it the way Azure does (REFERENCE.md, "Azure rules on the upload
path"):

- 403 for Put Blob (create), Set Blob Metadata / Properties, Delete, leases and conditional
  headers; with ``write_only`` (an ``--access-level Write`` grant) 403 for Get Blob too;
- Put Page past the end of the disk (416) or over 4 MiB (413), which Azurite accepts;
- Get Page Ranges answered in pages of at most ``max_results`` entries with a NextMarker, and
  500 OperationTimedOut for a listing wider than ``listing_span`` over more than
  ``fragmented`` ranges (an unsegmented listing of a fragmented blob);
- 503 ServerBusy above ``request_budget`` requests or ``byte_budget`` body bytes per second;
- with ``bearer`` set, 401 unless ``Authorization: Bearer <bearer>`` comes with the SAS (an
  Entra-protected disk); the header is checked here and not forwarded;
- :func:`revoke_problems`: what `az disk revoke-access` checks of the result.

Clients reach it as ``https://md-<id>.z1.blob.storage.azure.net/<container>/<blob>?<sas>`` with
``connect_to`` (``VHDKIT_TEST_CONNECT_TO``) pointing at the loopback port; the double adds
Azurite's account segment to the path. Reusable: issue #13's one-command flow builds on it.
"""

from __future__ import annotations

import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from faultproxy import MAX_PUT_PAGE, Counters, FaultProxy, Reply, Request, error_reply

MIB = 1024 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_PAGE_RANGE = re.compile(r"<PageRange><Start>(\d+)</Start><End>(\d+)</End></PageRange>")
CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since",
               "x-ms-if-sequence-number-le", "x-ms-if-sequence-number-lt",
               "x-ms-if-sequence-number-eq", "x-ms-if-tags", "x-ms-lease-id", "x-ms-lease-action")


@dataclass
class MdCounters:
    refused: list[str] = field(default_factory=list)  # "METHOD what: code"
    throttled: int = 0
    timeouts: int = 0
    listings: int = 0  # Get Page Ranges answered
    gets: int = 0  # Get Blob requests answered (any status)
    clears: int = 0
    hosts: set[str] = field(default_factory=set)
    authorization: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)  # x-ms-version of the requests
    inflight_at_put: list[int] = field(default_factory=list)  # Put Pages in flight, per arrival


class ManagedDiskDouble(FaultProxy):
    """``with ManagedDiskDouble(azurite_url) as md: md.sas_url(container, blob, token)``."""

    def __init__(self, upstream: str, *, write_only: bool = False, max_results: int = 4,
                 listing_span: int = 16 * MIB, fragmented: int = 8,
                 request_budget: float | None = None, byte_budget: float | None = None,
                 bearer: str | None = None) -> None:
        super().__init__(upstream)
        self.host = f"md-{uuid.uuid4().hex[:12]}.z1.blob.storage.azure.net"
        self.account_path = urlsplit(upstream).path.rstrip("/")
        self.write_only = write_only
        self.max_results = max_results
        self.listing_span = listing_span
        self.fragmented = fragmented
        self.request_budget = request_budget
        self.byte_budget = byte_budget
        self.bearer = bearer
        self.md = MdCounters()
        self._sizes: dict[str, int] = {}
        self._window = (0.0, 0, 0)  # second, requests, bytes
        self._puts_in_flight = 0
        self._md_lock = threading.Lock()

    def reset_counters(self) -> Counters:
        with self._md_lock:
            self.md = MdCounters()
        return super().reset_counters()

    @property
    def connect_to(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def sas_url(self, container: str, blob: str, sas_token: str) -> str:
        return f"https://{self.host}/{container}/{blob}?{sas_token}"

    # -- the rules -------------------------------------------------------------------------
    def _refuse(self, req: Request, what: str, status: int, code: str) -> Reply:
        with self._md_lock:
            self.md.refused.append(f"{req.method} {what}: {code}")
        return error_reply(status, code)

    def _over_budget(self, nbytes: int) -> bool:
        now = int(time.monotonic())
        with self._md_lock:
            sec, n, b = self._window
            if sec != now:
                sec, n, b = now, 0, 0
            n, b = n + 1, b + nbytes
            self._window = (sec, n, b)
            over = ((self.request_budget is not None and n > self.request_budget)
                    or (self.byte_budget is not None and b > self.byte_budget))
            if over:
                self.md.throttled += 1
            return over

    def intercept(self, req: Request) -> Reply | None:
        h = req.headers
        with self._md_lock:
            self.md.hosts.add(h.get("host", ""))
            self.md.authorization.append(h.get("authorization", ""))
            self.md.versions.add(h.get("x-ms-version", ""))
        if self.bearer is not None and h.get("authorization") != f"Bearer {self.bearer}":
            return self._refuse(req, "without the disk's bearer token", 401,
                                "InvalidAuthenticationInfo")
        if self._over_budget(len(req.body)):
            return error_reply(503, "ServerBusy", "above the test double's budget")
        query = parse_qs(urlsplit(req.path).query)
        comp = (query.get("comp") or [""])[0]
        cond = [k for k in CONDITIONAL if k in h]
        if cond or comp == "lease":
            return self._refuse(req, f"conditional or lease headers {cond}", 403,
                                "ConditionHeadersNotSupported")
        if req.method == "DELETE":
            return self._refuse(req, "Delete Blob", 403, "AuthorizationPermissionMismatch")
        if req.method == "PUT" and comp in ("metadata", "properties", "tags", "tier"):
            return self._refuse(req, f"Set Blob {comp}", 403, "AuthorizationPermissionMismatch")
        if req.method == "PUT" and comp != "page":
            return self._refuse(req, "Put Blob", 403, "AuthorizationPermissionMismatch")
        if req.method == "GET" and comp == "":
            with self._md_lock:
                self.md.gets += 1
            if self.write_only:
                return self._refuse(req, "Get Blob (write-only grant)", 403,
                                    "AuthorizationPermissionMismatch")
        if req.method == "PUT" and comp == "page":
            return self._check_put_page(req)
        if req.method == "GET" and comp == "pagelist":
            return self._check_listing(req)
        return None

    def _range(self, req: Request) -> tuple[int, int] | None:
        m = _RANGE.fullmatch((req.headers.get("x-ms-range") or req.headers.get("range")
                              or "").strip())
        return (int(m.group(1)), int(m.group(2)) + 1) if m else None

    def _size(self, req: Request) -> int:
        path = urlsplit(req.path).path
        if path not in self._sizes:
            head = Request("HEAD", req.path, {k: v for k, v in req.headers.items()
                                              if k.startswith("x-ms-version")}, b"")
            self._sizes[path] = self._blob_size(head)
        return self._sizes[path]

    def _blob_size(self, head: Request) -> int:
        import http.client

        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            path, _ = self.upstream(head)
            conn.request("HEAD", path, headers={"x-ms-version": "2021-08-06"})
            resp = conn.getresponse()
            resp.read()
            return int(resp.getheader("content-length") or 0)
        finally:
            conn.close()

    def _check_put_page(self, req: Request) -> Reply | None:
        rng = self._range(req)
        if rng is None:
            return self._refuse(req, "Put Page without a range", 400, "InvalidHeaderValue")
        start, end = rng
        if req.headers.get("x-ms-page-write", "").lower() == "clear":
            with self._md_lock:
                self.md.clears += 1
        elif end - start > MAX_PUT_PAGE:
            return self._refuse(req, f"Put Page of {end - start} bytes", 413,
                                "RequestBodyTooLarge")
        if end > self._size(req):
            return self._refuse(req, f"Put Page {start}..{end} past the end", 416,
                                "InvalidPageRange")
        with self._md_lock:
            self.md.inflight_at_put.append(self._active)
        return None

    def _check_listing(self, req: Request) -> Reply | None:
        rng = self._range(req) or (0, self._size(req))
        if rng[1] - rng[0] > self.listing_span:
            ranges = self._ranges_upstream(req)
            if sum(1 for s, e in ranges if s < rng[1] and e > rng[0]) > self.fragmented:
                with self._md_lock:
                    self.md.timeouts += 1
                return error_reply(500, "OperationTimedOut",
                                   "Operation could not be completed within the specified time.")
        return None

    def _ranges_upstream(self, req: Request) -> list[tuple[int, int]]:
        import http.client

        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            path, headers = self.upstream(Request(req.method, req.path, {
                k: v for k, v in req.headers.items() if k not in ("x-ms-range", "range")}, b""))
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            conn.endheaders()
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        return [(int(a), int(b) + 1) for a, b in _PAGE_RANGE.findall(text)]

    def upstream(self, req: Request) -> tuple[str, list[tuple[str, str]]]:
        headers = [(k, v) for k, v in req.headers.items() if k not in ("host", "authorization")]
        headers.append(("Host", f"{self.upstream_host}:{self.upstream_port}"))
        return self.account_path + req.path, headers

    def transform(self, req: Request, reply: Reply) -> Reply:
        query = parse_qs(urlsplit(req.path).query)
        if req.method == "GET" and (query.get("comp") or [""])[0] == "pagelist" \
                and reply.status == 200:
            with self._md_lock:
                self.md.listings += 1
            return self._paginate(req, query, reply)
        return reply

    def _paginate(self, req: Request, query: dict[str, list[str]], reply: Reply) -> Reply:
        """Azure pages Get Page Ranges (API 2020-10-02+); Azurite answers in one piece."""
        if req.headers.get("x-ms-version", "") < "2020-10-02":
            return reply  # older versions answer in one piece
        entries = _PAGE_RANGE.findall(reply.payload.decode())
        rng = self._range(req)
        if rng is not None:  # Azurite may ignore the range: keep what intersects it
            entries = [(a, b) for a, b in entries if int(a) < rng[1] and int(b) + 1 > rng[0]]
        want = int((query.get("maxresults") or [str(self.max_results)])[0])
        size = min(want, self.max_results)
        first = int((query.get("marker") or ["0"])[0] or 0)
        page = entries[first:first + size]
        nxt = first + size if first + size < len(entries) else None
        xml = "".join(f"<PageRange><Start>{a}</Start><End>{b}</End></PageRange>" for a, b in page)
        marker = f"<NextMarker>{nxt}</NextMarker>" if nxt is not None else "<NextMarker />"
        payload = (f'<?xml version="1.0" encoding="utf-8"?><PageList>{xml}{marker}'
                   "</PageList>").encode()
        headers = [(k, v) for k, v in reply.headers if k.lower() != "content-length"]
        return Reply(200, headers, payload)


def revoke_problems(blob_size: int, last_sector: bytes) -> list[str]:
    """What `az disk revoke-access` refuses: the last 512 bytes must be a fixed-VHD footer
    (cookie ``conectix``, valid checksum, disk type 2) whose size is the blob's size minus the
    footer and a whole number of MiB."""
    out = []
    if len(last_sector) != 512:
        return [f"last sector is {len(last_sector)} bytes"]
    if last_sector[:8] != b"conectix":
        out.append(f"no footer cookie in the last 512 bytes: {last_sector[:8]!r}")
    current = struct.unpack(">Q", last_sector[48:56])[0]
    disk_type = struct.unpack(">I", last_sector[60:64])[0]
    stored = struct.unpack(">I", last_sector[64:68])[0]
    checksum = ~sum(last_sector[:64] + b"\0" * 4 + last_sector[68:]) & 0xFFFFFFFF
    if disk_type != 2:
        out.append(f"disk type {disk_type}, not fixed (2)")
    if stored != checksum:
        out.append(f"footer checksum {stored:#x}, expected {checksum:#x}")
    if current != blob_size - 512:
        out.append(f"footer size {current} but the disk holds {blob_size - 512} bytes before it")
    if current % MIB:
        out.append(f"virtual size {current} is not a whole number of MiB")
    return out
