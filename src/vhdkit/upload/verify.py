"""``--verify``: prove the destination holds the stream.

Every page range on the destination is read back, with one plain ranged Get Blob per window
(the SDK's downloader would list the whole blob's page ranges on every call), and its SHA-256
compared with the same range of the local stream; every non-zero sector of the local stream
must lie inside a page range (outside them the blob reads as zeros). Page ranges closer than
``WINDOW_GAP`` are read as one window of at most 4 MiB (the zeros between them compared too): a
read costs far more than its bytes, and a disk uploaded with ``--merge-gap 0`` has one range per
non-zero run.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..azure_view import AzureView
from ..errors import UploadError
from ..extents import Extent, align_to_sectors, merge, nonzero_runs, split, subtract
from .plan import CHUNK
from .types import MAX_WRITE

WINDOW_GAP = 1024 * 1024


@dataclass
class VerifyResult:
    ranges: int
    bytes_compared: int
    bytes_scanned_outside: int
    reads: int = 0  # Get Blob requests
    seconds: float = 0.0  # verify's own time (page listing not included)


def verify(view: AzureView, page_ranges: list[Extent], read_remote: Callable[[int, int], bytes],
           concurrency: int = 8,
           on_progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Raise UploadError naming the first differing offset; return what was compared.
    ``on_progress(bytes_compared, bytes_to_compare)`` is called as windows complete."""
    t0 = time.monotonic()
    pieces = list(split(merge(page_ranges, WINDOW_GAP), MAX_WRITE))
    todo = sum(r.length for r in pieces)
    done = [0]
    lock = threading.Lock()
    for r in pieces:
        if r.end > view.stream_size:
            raise UploadError(f"verify: destination has pages at {r.start}..{r.end} beyond the "
                              f"stream size {view.stream_size}")

    def check(r: Extent) -> None:
        remote = hashlib.sha256(read_remote(r.start, r.length)).digest()
        local = hashlib.sha256(view.read_at(r.start, r.length)).digest()
        if remote != local:
            raise UploadError(f"verify: destination differs from the source in "
                              f"bytes {r.start}..{r.end}")
        with lock:
            done[0] += r.length
            if on_progress is not None:
                on_progress(done[0], todo)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(check, r) for r in pieces]
        try:
            for fut in futures:
                fut.result()
        finally:
            for fut in futures:
                fut.cancel()  # the first failure (e.g. a 403) ends the verify
    outside = subtract(align_to_sectors(view.extents(), view.stream_size), pieces)
    scanned = 0
    for piece in split(outside, CHUNK):
        runs = nonzero_runs(view.read_at(piece.start, piece.length), piece.start)
        if runs:
            raise UploadError(f"verify: source bytes {runs[0].start}..{runs[0].end} are non-zero "
                              "but the destination holds no page there")
        scanned += piece.length
    return VerifyResult(len(page_ranges), todo, scanned, len(pieces), time.monotonic() - t0)
