"""What identifies an upload's source, recorded in blob metadata so that a rerun can resume.

Metadata (ASCII, as HTTP headers require): the source file's name (URL-quoted, informative; never
its local path), its size and mtime, a cheap fingerprint (SHA-256 of the stream's footer and a
few sampled sectors) and the stream size. A rerun whose source matches on all but the name
resumes; a mismatch refuses unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import quote, unquote

from ..azure_view import AzureView
from ..extents import SECTOR
from .types import SourceInfo

PREFIX = "vhdkit_"
VERSION = "1"
SAMPLES = 16
SAMPLE_LEN = 4096


def fingerprint(view: AzureView) -> str:
    """SHA-256 over the footer and ``SAMPLES`` evenly spaced 4 KiB samples of the data: a few
    dozen KiB read, whatever the size, yet any resize, re-convert or new image changes it."""
    h = hashlib.sha256(view.footer_bytes)
    size = view.virtual_size
    for i in range(SAMPLES):
        off = size * i // SAMPLES // SECTOR * SECTOR
        h.update(view.read_at(off, min(SAMPLE_LEN, size - off)))
    return h.hexdigest()[:32]


def source_info(view: AzureView) -> SourceInfo:
    # The file name only: the absolute local path would tell the storage account how this
    # machine is laid out.
    path = os.path.basename(view.disk.path)
    try:
        st = os.stat(view.disk.path)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = view.disk.size, 0
    return SourceInfo(path=path, size=size, mtime_ns=mtime, fingerprint=fingerprint(view),
                      stream_size=view.stream_size)


def to_metadata(info: SourceInfo) -> dict[str, str]:
    return {
        f"{PREFIX}version": VERSION,
        f"{PREFIX}source": quote(info.path, safe="/"),
        f"{PREFIX}source_size": str(info.size),
        f"{PREFIX}source_mtime_ns": str(info.mtime_ns),
        f"{PREFIX}fingerprint": info.fingerprint,
        f"{PREFIX}stream_size": str(info.stream_size),
    }


def from_metadata(md: dict[str, str]) -> SourceInfo | None:
    """The recorded source, or None when the blob carries no (readable) vhdkit metadata."""
    low = {k.lower(): v for k, v in md.items()}
    try:
        if low.get(f"{PREFIX}version") != VERSION:
            return None
        return SourceInfo(path=unquote(low[f"{PREFIX}source"]),
                          size=int(low[f"{PREFIX}source_size"]),
                          mtime_ns=int(low[f"{PREFIX}source_mtime_ns"]),
                          fingerprint=low[f"{PREFIX}fingerprint"],
                          stream_size=int(low[f"{PREFIX}stream_size"]))
    except (KeyError, ValueError):
        return None


def mismatch(recorded: SourceInfo, current: SourceInfo) -> str | None:
    """Why ``recorded`` is not the same source as ``current`` (None when it is)."""
    for name in ("stream_size", "size", "mtime_ns", "fingerprint"):
        a, b = getattr(recorded, name), getattr(current, name)
        if a != b:
            return f"{name} differs (destination records {a}, source has {b})"
    return None
