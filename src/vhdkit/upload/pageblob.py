"""The page-blob destination: the only module that imports the Azure SDK.

Every SDK error is translated into :class:`~vhdkit.errors.UploadError` (or its retryable
:class:`TransientError`) with a one-line message naming the blob without its SAS query, with
keys and signatures redacted.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobClient, BlobType, ContentSettings

from ..errors import UploadError
from ..extents import Extent
from ..secrets import redact
from .types import Target, TransientError

T = TypeVar("T")

#: Azurite's well-known development account (public and documented: not a secret).
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
                "KBHBeksoGMGw==")
EMULATOR_URL = f"http://127.0.0.1:10000/{EMULATOR_ACCOUNT}"
CONNECT_TIMEOUT_S = 20
READ_TIMEOUT_S = 120
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
CONTROL_ATTEMPTS = 5


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


def _bind(fn: Callable[[int, int], object], a: int, b: int) -> Callable[[], object]:
    return lambda: fn(a, b)


class PageBlob:
    """One page blob, through a connection pool sized for the writers."""

    def __init__(self, target: Target, concurrency: int = 8) -> None:
        self.target = target
        self._secrets = target.secrets()
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2,
                                                pool_maxsize=max(4, concurrency + 2))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # vhdkit retries itself (the engine counts and backs off), so the SDK must not.
        kwargs: dict[str, Any] = dict(
            transport=RequestsTransport(session=session, session_owner=True),
            retry_total=0, connection_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)
        try:
            self.client = self._make_client(target, kwargs)
        except UploadError:
            raise
        except (ValueError, AzureError) as exc:
            raise UploadError(self._clean(f"invalid destination: {exc}")) from exc
        self.name = _strip_query(self.client.url)

    def _make_client(self, t: Target, kw: dict[str, Any]) -> BlobClient:
        if t.sas_url is not None:
            if "sig=" not in urlsplit(t.sas_url).query:
                raise UploadError("the destination URL carries no SAS signature (sig=...)")
            return BlobClient.from_blob_url(t.sas_url, **kw)
        if not (t.container and t.blob):
            raise UploadError("--container and --blob are required with this destination")
        if t.connection_string is not None:
            return BlobClient.from_connection_string(t.connection_string, t.container, t.blob,
                                                     **kw)
        if t.emulator is not None:
            url = t.emulator.rstrip("/")
            cred: Any = {"account_name": _account_name(url), "account_key": EMULATOR_KEY}
            return BlobClient(url, t.container, t.blob, credential=cred, **kw)
        if t.account_url is None:
            raise UploadError("no destination: give a SAS URL, --account-url, "
                              "--connection-string or --emulator")
        url = t.account_url.rstrip("/")
        if t.account_key:
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
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            code = _error_code(exc)
            text = f"{where}: HTTP {status} {code}".rstrip()
            if status == 403:
                text += " (access denied: check the account key, or the SAS expiry and permissions)"
            elif code == "ContainerNotFound":
                text = f"{where}: container {self.client.container_name!r} does not exist"
            elif status in RETRYABLE_STATUS:
                return TransientError(self._clean(text))
            else:
                first = (exc.message or "").splitlines()[0] if exc.message else ""
                if first and code not in first:
                    text += f": {first}"
            return UploadError(self._clean(text))
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return TransientError(self._clean(f"{where}: {type(exc).__name__}: {exc}"))
        if isinstance(exc, AzureError | requests.RequestException | OSError | ValueError):
            return UploadError(self._clean(f"{where}: {exc}"))
        raise exc

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """A control-plane call: retried a few times on transient failures."""
        for attempt in range(CONTROL_ATTEMPTS):
            try:
                return fn()
            except Exception as exc:  # translated (or re-raised) below
                err = self._translate(action, exc)
                if not isinstance(err, TransientError) or attempt == CONTROL_ATTEMPTS - 1:
                    raise err from exc
            time.sleep(random.uniform(0.1, 0.3) * 2**attempt)
        raise AssertionError("unreachable")

    # -- operations ----------------------------------------------------------------------
    def state(self) -> BlobState | None:
        """Size, type and metadata; None when the blob does not exist (its container must)."""
        try:
            props = self.client.get_blob_properties()
        except HttpResponseError as exc:
            if exc.status_code == 404 and _error_code(exc) != "ContainerNotFound":
                return None
            raise self._translate("reading properties of", exc) from exc
        except Exception as exc:
            raise self._translate("reading properties of", exc) from exc
        btype = props.blob_type
        name = btype.value if isinstance(btype, BlobType) else str(btype)
        return BlobState(size=int(props.size), blob_type=name,
                         metadata=dict(props.metadata or {}))

    def create(self, size: int, metadata: dict[str, str]) -> None:
        """Create (or replace) the page blob, all zeros, with ``metadata``."""
        self._call("creating", lambda: self.client.create_page_blob(size, metadata=metadata))

    def ensure_container(self) -> None:
        """Create the blob's container unless it exists (not possible through a blob SAS)."""
        container = self.client._get_container_client()  # the SDK's own way from blob to container
        if not self._call("checking the container of", container.exists):
            self._call("creating the container of", container.create_container)

    def delete(self) -> None:
        self._call("deleting", self.client.delete_blob)

    def set_metadata(self, metadata: dict[str, str]) -> None:
        self._call("writing metadata of", lambda: self.client.set_blob_metadata(metadata))

    def page_ranges(self) -> list[Extent]:
        def fetch() -> list[Extent]:
            out = []
            for r in self.client.list_page_ranges():
                start, end = int(r.start or 0), int(r.end or 0)
                if not r.cleared:
                    out.append(Extent(start, end + 1 - start))
            return out

        return self._call("listing page ranges of", fetch)

    def clear(self, ranges: list[Extent]) -> None:
        for r in ranges:
            self._call("clearing pages of", _bind(self.client.clear_page, r.start, r.length))

    def put_page(self, offset: int, data: bytes) -> None:
        """One Put Page; raises TransientError for what is worth retrying."""
        try:
            self.client.upload_page(data, offset=offset, length=len(data))
        except Exception as exc:
            raise self._translate(f"writing {len(data)} bytes at {offset} to", exc) from exc

    def read(self, offset: int, length: int) -> bytes:
        def fetch() -> bytes:
            return bytes(self.client.download_blob(offset=offset, length=length).readall())

        return self._call("reading", fetch)

    def set_content_md5(self, digest: bytes) -> None:
        def apply() -> None:
            props = self.client.get_blob_properties()
            settings: ContentSettings = props.content_settings
            settings.content_md5 = bytearray(digest)
            self.client.set_http_headers(content_settings=settings)

        self._call("setting Content-MD5 of", apply)

    def content_md5(self) -> bytes | None:
        def fetch() -> bytes | None:
            md5 = self.client.get_blob_properties().content_settings.content_md5
            return bytes(md5) if md5 else None

        return self._call("reading Content-MD5 of", fetch)

    def close(self) -> None:
        self.client.close()
