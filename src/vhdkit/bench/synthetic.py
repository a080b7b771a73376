"""Synthetic disks generated on the fly: no temporary files, deterministic for a seed.

Data comes from a small pool of random bytes, sliced at offsets derived from the position, so
generating it costs a memory copy, not a random-number generator, and never limits the upload
being measured. Azure does not compress or deduplicate page blobs, so pooled bytes are as good
as fresh ones for timing.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..extents import SECTOR, Extent, merge
from ..formats import VirtualDisk

POOL = 8 * 1024 * 1024
BLOCK = 4 * 1024 * 1024  # the pool holds POOL + BLOCK bytes: any slice fits
SHAPES = ("dense", "sparse")


def parse_run_lengths(text: str) -> tuple[int, int]:
    """'4K-64K' -> (4096, 65536): the run-length range of a sparse disk's data runs."""
    from ..sizes import parse_size

    lo_s, sep, hi_s = text.partition("-")
    lo = parse_size(lo_s)
    hi = parse_size(hi_s) if sep else lo
    if not SECTOR <= lo <= hi or lo % SECTOR or hi % SECTOR:
        raise UsageError(f"run lengths {text!r}: need MIN-MAX, multiples of 512, MIN <= MAX")
    return lo, hi


class SyntheticDisk(VirtualDisk):
    """``dense``: every byte data. ``sparse``: ``fraction`` of the disk in runs whose lengths are
    log-uniform between ``run_lengths``, at random places."""

    kind = "synthetic"

    def __init__(self, size: int, shape: str = "sparse", fraction: float = 0.1,
                 run_lengths: tuple[int, int] = (4096, 65536), seed: int = 0) -> None:
        if shape not in SHAPES:
            raise UsageError(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}")
        if size <= 0 or size % SECTOR:
            raise UsageError(f"size {size} must be a positive multiple of 512")
        if not 0.0 <= fraction <= 1.0:
            raise UsageError(f"data fraction {fraction} must be between 0 and 1")
        self.path = f"synthetic:{shape}:{size}:{fraction}:{seed}"
        self.shape = shape
        self._size = size
        rng = np.random.default_rng(seed)
        self._pool = rng.integers(1, 256, POOL + BLOCK, dtype=np.uint8).tobytes()
        if shape == "dense":
            self._extents = [Extent(0, size)]
        else:
            self._extents = _layout(rng, size, fraction, run_lengths)
        self._starts = np.array([e.start for e in self._extents], dtype=np.int64)

    @property
    def size(self) -> int:
        return self._size

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self._extents)

    def extents(self) -> list[Extent]:
        return list(self._extents)

    def _read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        end = offset + length
        i = max(0, int(np.searchsorted(self._starts, offset, side="right")) - 1)
        while i < len(self._extents) and self._extents[i].start < end:
            e = self._extents[i]
            s, t = max(offset, e.start), min(end, e.end)
            pos = s
            while pos < t:  # each 4 MiB block of the disk is one pool slice, chosen by the block
                block, within = divmod(pos, BLOCK)
                n = min(t - pos, BLOCK - within)
                src = (block * 2654435761) % POOL + within
                out[pos - offset : pos - offset + n] = self._pool[src : src + n]
                pos += n
            i += 1
        return bytes(out)


def _layout(rng: np.random.Generator, size: int, fraction: float,
            run_lengths: tuple[int, int]) -> list[Extent]:
    """Random non-overlapping runs covering about ``fraction`` of ``size``."""
    target = int(size * fraction) // SECTOR * SECTOR
    if target >= size:  # random placement would take long to hit the last free sectors
        return [Extent(0, size)]
    lo, hi = (max(SECTOR, x // SECTOR * SECTOR) for x in run_lengths)
    out: list[Extent] = []
    placed = 0
    sectors = size // SECTOR
    while placed < target:
        batch = max(16, min(65536, (target - placed) // max(lo, 1) + 1))
        lengths = np.exp(rng.uniform(np.log(lo), np.log(hi) + 1e-9, batch)).astype(np.int64)
        lengths = np.maximum(lengths // SECTOR, 1) * SECTOR
        starts = rng.integers(0, sectors, batch, dtype=np.int64) * SECTOR
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            n = min(n, size - s, target - placed)
            if n <= 0:
                break
            out.append(Extent(s, n))
            placed += n
        merged = merge(out)
        placed = sum(e.length for e in merged)  # overlaps counted once
        out = merged
    return merge(out)
