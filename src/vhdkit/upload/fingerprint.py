"""Did the pages already on a destination come from this source? (``--resume``)

A managed disk keeps no metadata, so the destination itself is the evidence: every sector inside
its page ranges was written from the source, so it must read back as the source's bytes. The
check reads a few sectors -- the footer sector when it is present, and ``SAMPLES`` sectors spread
evenly over the bytes present -- and compares them: a few KiB whatever the disk's size, yet
another image, a resize or a re-convert shows up.
"""

from __future__ import annotations

from typing import Protocol

from ..azure_view import AzureView
from ..extents import SECTOR, Extent

SAMPLES = 16


class _Readable(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


def fingerprint_offsets(view: AzureView, present: list[Extent]) -> list[int]:
    """Sector offsets to compare: the footer sector (if present) and up to ``SAMPLES`` sectors
    spread evenly over ``present``."""
    footer = view.stream_size - SECTOR
    out = [footer] if any(r.start <= footer < r.end for r in present) else []
    total = sum(r.length // SECTOR for r in present)
    if total == 0:
        return out
    picks = sorted({total * i // SAMPLES for i in range(SAMPLES)})
    i, seen = 0, 0
    for r in present:
        n = r.length // SECTOR
        while i < len(picks) and picks[i] < seen + n:
            out.append(r.start + (picks[i] - seen) * SECTOR)
            i += 1
        seen += n
    return sorted(set(out))


def source_fingerprint(view: AzureView, present: list[Extent]) -> dict[int, bytes]:
    """The source's bytes at :func:`fingerprint_offsets`."""
    return {off: view.read_at(off, SECTOR) for off in fingerprint_offsets(view, present)}


def first_mismatch(blob: _Readable, view: AzureView, present: list[Extent]) -> int | None:
    """The first fingerprint sector whose bytes on ``blob`` differ from the source, or None.
    Raises :class:`~vhdkit.upload.types.ReadForbidden` when the destination cannot be read."""
    for off, want in source_fingerprint(view, present).items():
        if blob.read(off, SECTOR) != want:
            return off
    return None


def matches(blob: _Readable, view: AzureView, present: list[Extent]) -> bool:
    """True when the pages ``present`` on ``blob`` are this source's bytes (sampled)."""
    return first_mismatch(blob, view, present) is None
