"""Value types shared by the upload modules (no I/O, no Azure SDK)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

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
