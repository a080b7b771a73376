"""Value types shared by the upload modules (no I/O, no Azure SDK)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import NetworkError, UploadError, UsageError
from ..extents import Extent

MIB = 1024 * 1024
#: Azure's limit for one Put Page; Azurite accepts more, so vhdkit enforces it itself.
MAX_WRITE = 4 * MIB


def check_max_write(n: int) -> None:
    """A Put Page size must be whole sectors and within Azure's limit."""
    if not 0 < n <= MAX_WRITE or n % 512:
        raise UsageError(f"maximum write {n} bytes: must be a multiple of 512 and at most "
                         f"{MAX_WRITE // MIB} MiB")


class Write(NamedTuple):
    """One Put Page: ``data`` (a 512-byte multiple, at most 4 MiB) at ``offset``."""

    offset: int
    data: bytes

    @property
    def extent(self) -> Extent:
        return Extent(self.offset, len(self.data))


class TransientError(NetworkError):
    """A failure worth retrying: timeout, connection reset, 500, 503 ServerBusy, 429.
    ``throttled``: the service asked to slow down (503 ServerBusy, 500 OperationTimedOut, 429),
    so the engine lowers its concurrency, not only waits."""

    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


class ReadForbidden(UploadError):
    """Reading the destination is refused (403): a write-only SAS (``--access-level Write``)."""


class WriterConflict(UploadError):
    """Another upload holds the blob (its lease, or its sequence number changed under us)."""


class BlobExists(UploadError):
    """An exclusive create found a blob of that name (another upload created it meanwhile)."""


class PageWriter(Protocol):
    """What the engine needs from a destination: one thread-safe page write."""

    def put_page(self, offset: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class SourceInfo:
    """What identifies the source of an upload (recorded in blob metadata for resume)."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    stream_size: int

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
#: Test-only: send an ``md-...`` destination's requests to this loopback HOST:PORT (the test
#: double standing in for a managed disk); anything but a loopback address is refused.
CONNECT_TO_ENV = "VHDKIT_TEST_CONNECT_TO"

TIB = 1024 * 1024 * MIB
#: Azure's limits on the stream size (virtual size + 512-byte footer).
MAX_PAGE_BLOB = 8 * TIB
MIN_MANAGED_DISK = 20 * MIB + 512
MAX_MANAGED_DISK = 32 * TIB + 512


def is_managed_disk_host(host: str) -> bool:
    """A managed disk's upload endpoint: ``md-....blob.storage.azure.net`` (as AzCopy keys on
    it; sovereign clouds end differently, the ``md-`` label and ``blob.storage`` stay)."""
    host = host.lower()
    return host.startswith("md-") and ".blob.storage." in host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost"


def sas_blob_url(sas_url: str, blob: str) -> str:
    """The blob's SAS URL: ``sas_url`` itself when it names a blob, else (a container SAS)
    ``blob`` under that container, keeping the query. Emulator-style URLs (an IP host) carry
    the account as their first path segment."""
    parts = urlsplit(sas_url)
    segments = [s for s in parts.path.split("/") if s]
    container_only = 2 if _is_ip(parts.hostname or "") else 1
    if len(segments) != container_only:
        return sas_url
    path = "/" + "/".join([*segments, quote(blob)])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_stream_limits(stream_size: int, managed_disk: bool) -> None:
    """Azure's size limits, checked before anything is created or sent."""
    if managed_disk and not MIN_MANAGED_DISK <= stream_size <= MAX_MANAGED_DISK:
        raise UploadError(f"the stream is {stream_size:,} bytes: a managed-disk upload is "
                          f"{MIN_MANAGED_DISK:,} (20 MiB + 512) to {MAX_MANAGED_DISK:,} "
                          "(32 TiB + 512) bytes")
    if not managed_disk and stream_size > MAX_PAGE_BLOB:
        raise UploadError(f"the stream is {stream_size:,} bytes: a page blob holds at most "
                          f"{MAX_PAGE_BLOB:,} bytes (8 TiB); upload larger disks to a managed "
                          "disk")


@dataclass(frozen=True)
class Target:
    """Where to upload. Exactly one form: ``sas_url``; ``account_url`` (+ key or Entra ID);
    ``connection_string``; or ``emulator`` (a URL, the dev account). Holds secrets: never print."""

    sas_url: str | None = None
    account_url: str | None = None
    account_key: str | None = None
    connection_string: str | None = None
    emulator: str | None = None
    container: str | None = None
    blob: str | None = None
    #: A storage API version other than the SDK's (Azure Stack Hub / Edge refuse new ones).
    api_version: str | None = None
    #: Also send an Entra ID bearer token for https://disk.azure.com/ (disks created with
    #: ``--data-access-auth-mode AzureActiveDirectory``); from ``disk_credential`` or
    #: DefaultAzureCredential.
    disk_token: bool = False
    disk_credential: object | None = field(default=None, repr=False, compare=False)
    #: Test-only loopback HOST:PORT the requests go to; the URL (and its host) stays as given.
    connect_to: str | None = None

    @property
    def is_sas(self) -> bool:
        return self.sas_url is not None

    @property
    def host(self) -> str:
        url = self.sas_url or self.account_url or self.emulator or ""
        return (urlsplit(url).hostname or "").lower()

    @property
    def is_managed_disk(self) -> bool:
        return self.sas_url is not None and is_managed_disk_host(self.host)

    def __repr__(self) -> str:  # never the SAS or keys
        return f"Target(host={self.host!r}, container={self.container!r}, blob={self.blob!r})"

    def secrets(self) -> list[str]:
        out = [self.account_key or "", self.connection_string or ""]
        if self.sas_url:
            out.append(urlsplit(self.sas_url).query)
        return [s for s in out if s]

    def forms(self) -> list[str]:
        return [x for x in (self.sas_url, self.account_url, self.connection_string, self.emulator)
                if x is not None]

    def resolve(self, *, required: bool) -> Target | None:
        """Exactly one destination form, or $AZURE_STORAGE_CONNECTION_STRING when none is
        given; None when there is none and ``required`` is false (a dry run)."""
        forms = self.forms()
        if len(forms) > 1:
            raise UsageError("give one destination: a SAS URL, --account-url, "
                             "--connection-string or --emulator")
        if not forms and os.environ.get(CONNECTION_STRING_ENV):
            return replace(self, connection_string=os.environ[CONNECTION_STRING_ENV])
        if not forms:
            if required:
                raise UsageError("no destination: give a SAS URL, --account-url, "
                                 "--connection-string or --emulator")
            return None
        connect = os.environ.get(CONNECT_TO_ENV)
        if connect and self.connect_to is None and is_managed_disk_host(self.host):
            host = connect.rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost", "[::1]"):
                raise UsageError(f"{CONNECT_TO_ENV} must name a loopback HOST:PORT")
            return replace(self, connect_to=connect)
        return self
