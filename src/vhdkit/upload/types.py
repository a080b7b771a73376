"""Value types shared by the upload modules (no I/O, no Azure SDK)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from ..errors import UploadError, UsageError
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


class TransientError(UploadError):
    """A failure worth retrying: timeout, connection reset, 500, 503 ServerBusy, 429."""


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

    @property
    def is_sas(self) -> bool:
        return self.sas_url is not None

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
        return self
