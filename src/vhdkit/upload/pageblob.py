"""The page-blob destination: the only module that imports the Azure SDK.

Every SDK error is translated into :class:`~vhdkit.errors.UploadError` (or its retryable
:class:`TransientError`) with a one-line message naming the blob without its SAS query, with
keys and signatures redacted.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobType, ContentSettings

from ..errors import AuthenticationError, NetworkError, UploadError
from ..extents import Extent, merge
from ..secrets import install_log_redaction, redact
from ..secrets import register as register_secrets
from .engine import RetryPolicy
from .types import BlobExists, ReadForbidden, Target, TransientError, WriterConflict

T = TypeVar("T")
E = TypeVar("E", bound=UploadError)

#: Azurite's well-known development account (public and documented: not a secret).
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
                "KBHBeksoGMGw==")
EMULATOR_URL = f"http://127.0.0.1:10000/{EMULATOR_ACCOUNT}"
CONNECT_TIMEOUT_S = 20
READ_TIMEOUT_S = 120
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
#: Answers that mean "slow down" (the engine lowers its concurrency), not only "try again".
THROTTLE_CODES = {"ServerBusy", "OperationTimedOut", "TooManyRequests"}
#: Error codes saying that another writer holds the blob (lease) or moved its sequence number.
WRITER_CONFLICTS = {"LeaseAlreadyPresent", "LeaseIdMissing", "LeaseIdMismatchWithBlobOperation",
                    "LeaseIdMismatchWithLeaseOperation", "LeaseLost",
                    "LeaseNotPresentWithBlobOperation", "SequenceNumberConditionNotMet"}
#: Entra ID scope of a managed disk's data plane. The audience is ``https://disk.azure.com/``
#: *with* its slash; the v2 scope of a v1 resource is resource + "/.default", hence "//". (The
#: storage SDK's ``audience=`` strips the slash, so vhdkit asks for the scope itself.)
DISK_SCOPE = "https://disk.azure.com//.default"
#: Get Page Ranges: first segment, smallest segment, and entries per answer page.
LIST_SEGMENT = 1024 * 1024 * 1024
MIN_LIST_SEGMENT = 4 * 1024 * 1024
MAX_LIST_SEGMENT = 64 * LIST_SEGMENT
SPARSE_SEGMENT = 1000  # ranges in a segment below which the next segment doubles
LIST_PAGE_SIZE = 10_000
#: The first API version whose Get Page Ranges answers in pages (NextMarker).
PAGINATED_LISTING = "2020-10-02"


@dataclass
class BlobState:
    size: int
    blob_type: str
    metadata: dict[str, str] = field(default_factory=dict)


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _account_name(url: str) -> str:
    """Account of a storage URL: the host's first label, or the first path segment for
    emulator-style URLs (``http://127.0.0.1:10000/devstoreaccount1``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = host == "localhost"
    if is_ip:
        return parts.path.strip("/").split("/")[0]
    return host.split(".")[0]


def _error_code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None) or exc.reason or ""
    return str(getattr(code, "value", code))  # the SDK may hand back a StorageErrorCode enum


def _check_key(key: str) -> None:
    """A storage account key is base64; anything else would fail later as an opaque "HTTP 0"."""
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("--account-key is not a storage account key (expected base64, as "
                          "shown by az storage account keys list)") from None


def _status(err: E, status: int) -> E:
    """The HTTP status on a translated error: callers test it instead of the SDK error, which
    is never chained (its text holds the URL with its SAS)."""
    err.status = status  # type: ignore[attr-defined]
    return err


def _is_timeout(exc: Exception) -> bool:
    return isinstance(exc, HttpResponseError) and _error_code(exc) == "OperationTimedOut"


class _ListingTimedOut(TransientError):
    """Get Page Ranges answered 500 OperationTimedOut: list a smaller segment."""


class _ConnectTo(requests.adapters.HTTPAdapter):
    """Sends every request to a fixed loopback HOST:PORT over plain HTTP, keeping the URL's
    host in the Host header (tests: a managed-disk double behind an ``md-...`` name)."""

    def __init__(self, connect_to: str, **kw: Any) -> None:
        super().__init__(**kw)
        self._to = connect_to

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(("http", self._to, parts.path, parts.query, ""))
        return super().send(request, *args, **kwargs)


class _DiskScope:
    """A TokenCredential that always asks its inner credential for the disk scope."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._inner.get_token(DISK_SCOPE, **kwargs)


class PageBlob:
    """One page blob, through a connection pool sized for the writers; a context manager
    (``with PageBlob(target) as blob:``) that closes the pool."""

    def __init__(self, target: Target, concurrency: int = 8,
                 retry: RetryPolicy | None = None) -> None:
        self.target = target
        self.retry = retry or RetryPolicy()
        self.list_segment = LIST_SEGMENT
        self.list_page_size = LIST_PAGE_SIZE
        self.list_calls = 0  # Get Page Ranges requests answered (reported by tests)
        self._secrets = target.secrets()
        register_secrets(self._secrets)
        install_log_redaction()
        #: set by upload/writer_lock.py: the lease every write carries, or the sequence number
        #: every Put Page is conditioned on (one writer per blob)
        self.lease_id: str | None = None
        self.sequence: int | None = None
        session = requests.Session()
        pool: dict[str, Any] = dict(pool_connections=2, pool_maxsize=max(4, concurrency + 2))
        adapter = (_ConnectTo(target.connect_to, **pool) if target.connect_to
                   else requests.adapters.HTTPAdapter(**pool))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # vhdkit retries itself (the engine counts and backs off), so the SDK must not.
        kwargs: dict[str, Any] = dict(
            transport=RequestsTransport(session=session, session_owner=True),
            retry_total=0, connection_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)
        if target.api_version:
            kwargs["api_version"] = target.api_version
        err = None
        try:
            self.client = self._make_client(target, kwargs)
        except UploadError:
            raise
        except (ValueError, AzureError) as exc:
            err = UploadError(self._clean(f"invalid destination: {exc}"))
        if err is not None:  # outside the except block: the SDK's text (a key?) is not chained
            raise err
        self.name = _strip_query(self.client.url)

    def _make_client(self, t: Target, kw: dict[str, Any]) -> BlobClient:
        if t.sas_url is not None:
            if "sig=" not in urlsplit(t.sas_url).query:
                raise UploadError("the destination URL carries no SAS signature (sig=...)")
            cred: Any = None
            if t.disk_token or t.disk_credential is not None:
                if not t.is_managed_disk:
                    raise UploadError("a disk token (--disk-token) is for a managed disk's "
                                      "md-... upload URL only")
                inner = t.disk_credential
                if inner is None:
                    from azure.identity import DefaultAzureCredential

                    inner = DefaultAzureCredential()
                cred = _DiskScope(inner)
            return BlobClient.from_blob_url(t.sas_url, credential=cred, **kw)
        if not (t.container and t.blob):
            raise UploadError("--container and --blob are required with this destination")
        if t.connection_string is not None:
            return BlobClient.from_connection_string(t.connection_string, t.container, t.blob,
                                                     **kw)
        if t.emulator is not None:
            url = t.emulator.rstrip("/")
            key = {"account_name": _account_name(url), "account_key": EMULATOR_KEY}
            return BlobClient(url, t.container, t.blob, credential=key, **kw)
        if t.account_url is None:
            raise UploadError("no destination: give a SAS URL, --account-url, "
                              "--connection-string or --emulator")
        url = t.account_url.rstrip("/")
        if t.account_key:
            _check_key(t.account_key)
            cred = {"account_name": _account_name(url), "account_key": t.account_key}
        else:
            from azure.identity import DefaultAzureCredential

            cred = DefaultAzureCredential()
        return BlobClient(url, t.container, t.blob, credential=cred, **kw)

    # -- error translation -------------------------------------------------------------
    def _clean(self, text: str) -> str:
        return " ".join(redact(text, self._secrets).split())

    def _translate(self, action: str, exc: Exception) -> UploadError:
        where = f"{action} {self.name}"
        if isinstance(exc, ClientAuthenticationError) and exc.response is None:
            # Raised by a credential, not the service: its own message says what to fix.
            return AuthenticationError(self._clean(f"{where}: Entra ID sign-in failed: "
                                                   f"{exc.message or exc}"))
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            code = _error_code(exc)
            text = f"{where}: HTTP {status} {code}".rstrip()
            if status in (401, 403):  # exit 3: the credentials, not the input
                return _status(AuthenticationError(self._clean(
                    f"{text} (access denied: check the account key, or the SAS expiry and "
                    "permissions)")), status)
            elif code == "ContainerNotFound":
                text = f"{where}: container {self.client.container_name!r} does not exist"
                if not self.target.is_sas:
                    text += " (rerun with --create-container to create it)"
            elif code in WRITER_CONFLICTS:
                return _status(WriterConflict(self._clean(
                    f"{where}: another upload is writing this blob (HTTP {status} {code})")),
                    status)
            elif status in RETRYABLE_STATUS:
                throttled = status in (429, 503) or code in THROTTLE_CODES
                return _status(TransientError(self._clean(text), throttled=throttled), status)
            else:
                first = (exc.message or "").splitlines()[0] if exc.message else ""
                if first and code not in first:
                    text += f": {first}"
            return _status(UploadError(self._clean(text)), status)
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return TransientError(self._clean(f"{where}: {type(exc).__name__}: {exc}"))
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return NetworkError(self._clean(f"{where}: {exc}"))
        if isinstance(exc, AzureError | requests.RequestException | OSError | ValueError):
            return UploadError(self._clean(f"{where}: {exc}"))
        raise exc

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """A control-plane call, retried on transient failures within the retry budget."""
        deadline = time.monotonic() + self.retry.budget_s
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:  # translated (or re-raised) below
                err = self._translate(action, exc)
            # Raised outside the except block: the SDK error (whose text holds the URL with
            # its SAS) is neither __cause__ nor __context__ of vhdkit's error.
            attempt += 1
            wait = self.retry.delay(attempt - 1)
            if (not isinstance(err, TransientError) or attempt >= self.retry.attempts
                    or time.monotonic() + wait > deadline):
                raise err
            time.sleep(wait)

    # -- operations ----------------------------------------------------------------------
    def state(self) -> BlobState | None:
        """Size, type and metadata; None when the blob does not exist (its container must)."""
        err = None
        try:
            props = self.client.get_blob_properties()
        except HttpResponseError as exc:
            if exc.status_code == 404 and _error_code(exc) != "ContainerNotFound":
                return None
            err = self._translate("reading properties of", exc)
        except Exception as exc:
            err = self._translate("reading properties of", exc)
        if err is not None:
            raise err
        btype = props.blob_type
        name = btype.value if isinstance(btype, BlobType) else str(btype)
        return BlobState(size=int(props.size), blob_type=name,
                         metadata=dict(props.metadata or {}))

    def _lease_kw(self) -> dict[str, Any]:
        return {} if self.lease_id is None else {"lease": self.lease_id}

    def _write_kw(self) -> dict[str, Any]:
        kw = self._lease_kw()
        if self.sequence is not None:
            kw["if_sequence_number_eq"] = self.sequence
        return kw

    def create(self, size: int, metadata: dict[str, str], *, exclusive: bool = False) -> None:
        """Create (or replace) the page blob, all zeros, with ``metadata``; ``exclusive``: only
        if no blob of that name exists (else :class:`BlobExists`)."""
        if exclusive:
            try:
                self._call("creating", lambda: self.client.create_page_blob(
                    size, metadata=metadata, if_none_match="*"))
            except UploadError as exc:
                if "BlobAlreadyExists" in str(exc):
                    raise BlobExists(str(exc)) from None
                raise
            return
        self._call("creating", lambda: self.client.create_page_blob(size, metadata=metadata,
                                                                     **self._lease_kw()))

    # -- one writer per blob (used by writer_lock.py) ------------------------------------
    def acquire_lease(self, lease_id: str, seconds: int) -> None:
        # retried: acquiring again with the same id is harmless
        self._call("leasing", lambda: self.client.acquire_lease(seconds, lease_id=lease_id))

    def renew_lease(self) -> None:
        if self.lease_id is not None:
            lease_id = self.lease_id
            self._call("renewing the lease of", lambda: BlobLeaseClient(
                self.client, lease_id=lease_id).renew())

    def release_lease(self) -> None:
        if self.lease_id is not None:
            lease_id = self.lease_id
            self._call("releasing the lease of", lambda: BlobLeaseClient(
                self.client, lease_id=lease_id).release())

    def set_sequence_number(self, number: int) -> None:
        self._call("setting the sequence number of",
                   lambda: self.client.set_sequence_number("update", str(number)))

    def ensure_container(self) -> None:
        """Create the blob's container unless it exists (not possible through a blob SAS)."""
        container = self.client._get_container_client()  # the SDK's own way from blob to container
        if not self._call("checking the container of", container.exists):
            self._call("creating the container of", container.create_container)

    def delete(self) -> None:
        self._call("deleting", self.client.delete_blob)

    def set_metadata(self, metadata: dict[str, str]) -> None:
        self._call("writing metadata of",
                   lambda: self.client.set_blob_metadata(metadata, **self._lease_kw()))

    def page_ranges(self, size: int) -> list[Extent]:
        """The blob's page ranges, listed in offset/length segments (an unsegmented listing of
        a large fragmented blob times out): a segment that times out is halved and retried, one
        with few ranges doubles the next (up to 64 GiB); each answer follows its NextMarker."""
        out: list[Extent] = []
        pos, seg = 0, self.list_segment
        while pos < size:
            length = min(seg, size - pos)
            try:
                got = self._list_segment(pos, length)
            except _ListingTimedOut:
                if length <= MIN_LIST_SEGMENT:
                    raise
                seg = max(MIN_LIST_SEGMENT, length // 2 // 512 * 512)
                continue
            out += got
            pos += length
            if len(got) < SPARSE_SEGMENT and seg < MAX_LIST_SEGMENT:
                seg *= 2  # few ranges here: an 8 TiB blob needs no 8,192 listings
        return merge(out)

    def _list_segment(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        marker: str | None = None
        end = offset + length
        if self.client.api_version < PAGINATED_LISTING:  # Azure Stack: one answer per segment
            def whole() -> list[Extent]:
                with warnings.catch_warnings():  # deprecated, but the only call old versions have
                    warnings.simplefilter("ignore", DeprecationWarning)
                    filled, _ = self.client.get_page_ranges(offset=offset, length=length)
                return [Extent(max(offset, r["start"]), min(end, r["end"] + 1)
                               - max(offset, r["start"])) for r in filled]

            got = self._call_once("listing page ranges of", whole)
            self.list_calls += 1
            return [r for r in got if r.length > 0]
        while True:
            def page(m: str | None = marker) -> tuple[list[Extent], str | None]:
                pager: Any = self.client.list_page_ranges(
                    offset=offset, length=length,
                    results_per_page=self.list_page_size).by_page(continuation_token=m)
                got = []
                for r in next(pager):
                    s, e = max(offset, int(r.start or 0)), min(end, int(r.end or 0) + 1)
                    if not r.cleared and e > s:
                        got.append(Extent(s, e - s))
                return got, pager.continuation_token

            try:
                got, marker = self._call_once("listing page ranges of", page)
            except StopIteration:
                return out
            self.list_calls += 1
            out += got
            if not marker:
                return out

    def _call_once(self, action: str, fn: Callable[[], T]) -> T:
        """One try, retried only for transient failures that are not throttling (a timed-out
        listing is retried by the caller with a smaller segment)."""
        deadline = time.monotonic() + self.retry.budget_s
        attempt = 0
        while True:
            try:
                return fn()
            except StopIteration:
                raise
            except Exception as exc:
                err = self._translate(action, exc)
                timed_out = _is_timeout(exc)
            attempt += 1
            wait = self.retry.delay(attempt - 1)
            if timed_out:
                raise _ListingTimedOut(str(err), throttled=True)
            if (not isinstance(err, TransientError) or attempt >= self.retry.attempts
                    or time.monotonic() + wait > deadline):
                raise err
            time.sleep(wait)

    def put_page(self, offset: int, data: bytes) -> None:
        """One Put Page; raises TransientError for what is worth retrying."""
        err = None
        try:
            self.client.upload_page(data, offset=offset, length=len(data), **self._write_kw())
        except Exception as exc:
            err = self._translate(f"writing {len(data)} bytes at {offset} to", exc)
        if err is not None:  # not chained: the SDK error's text holds the URL with its SAS
            raise err

    def read(self, offset: int, length: int) -> bytes:
        """One plain ranged Get Blob (the SDK's downloader lists the page ranges of the whole
        blob on every call). A 403 raises :class:`ReadForbidden` (a write-only SAS)."""
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}",
                   "x-ms-version": self.client.api_version}

        def fetch() -> bytes:
            resp = self.client._client._send_request(  # the SDK's own pipeline: auth, SAS
                HttpRequest("GET", self.client.url, headers=headers), stream=True)
            if resp.status_code not in (200, 206):
                resp.read()
                raise HttpResponseError(response=resp)
            data = resp.read()
            if len(data) != length:
                raise ServiceResponseError(f"short read: {len(data)} of {length} bytes")
            return bytes(data)

        try:
            return self._call(f"reading {length} bytes at {offset} of", fetch)
        except UploadError as exc:
            if getattr(exc, "status", None) == 403:
                raise ReadForbidden(str(exc)) from exc
            raise

    def set_content_md5(self, digest: bytes) -> None:
        def apply() -> None:
            props = self.client.get_blob_properties()
            settings: ContentSettings = props.content_settings
            settings.content_md5 = bytearray(digest)
            self.client.set_http_headers(content_settings=settings, **self._lease_kw())

        self._call("setting Content-MD5 of", apply)

    def content_md5(self) -> bytes | None:
        def fetch() -> bytes | None:
            md5 = self.client.get_blob_properties().content_settings.content_md5
            return bytes(md5) if md5 else None

        return self._call("reading Content-MD5 of", fetch)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> PageBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
