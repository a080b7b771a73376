"""Upload planning: which bytes of the Azure stream become which Put Page requests.

non-zero 512-byte runs inside the view's extents (holes and unallocated blocks are never read)
  - ranges already on the destination (resume)
  -> merged across zero gaps when sending the gap costs less than another request
  -> writes of at most 4 MiB, 512-aligned.

The cost model: a request costs a fixed time ``a`` (latency, client and server work), a byte costs
``b`` (the link). Sending a zero gap of ``g`` bytes instead of opening a new request pays when
``g * b < a``, so the break-even gap is ``a / b``. :class:`AdaptiveGap` fits ``a`` and ``b`` from
the requests the engine measures; :class:`FixedGap` is ``--merge-gap``.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..azure_view import AzureView
from ..extents import SECTOR, Extent, align_to_sectors, merge, nonzero_runs, split, subtract
from .types import MAX_WRITE, Write, check_max_write

KIB = 1024
#: Starting merge gap, between the optima measured locally against Azurite with 8 writers:
#: 256 KiB on one machine (REFERENCE.md: 3.8-4.1 s vs 6.6 s at 64 KiB and 4.7 s at 1 MiB) and
#: 64 KiB or less on another (benchmarks/RESULTS.md); over a 100 Mbit/s uplink bytes dominate and
#: the break-even is a few KiB. The adaptive model moves from here after the first requests.
DEFAULT_MERGE_GAP = 128 * KIB
MIN_ADAPTIVE_GAP = 4 * KIB
MAX_ADAPTIVE_GAP = 2 * 1024 * KIB
#: Bytes read and scanned per step: one Put Page worth, so a chunk never holds more than a write.
CHUNK = MAX_WRITE

_ZEROS = memoryview(bytes(MAX_WRITE))


class GapPolicy(Protocol):
    def current(self) -> int: ...

    def observe(self, nbytes: int, seconds: float, in_flight: int = 1) -> None: ...


class FixedGap:
    """``--merge-gap BYTES``: always the same gap (0 sends exactly the non-zero sectors)."""

    def __init__(self, gap: int) -> None:
        if gap < 0:
            raise ValueError("merge gap must be >= 0")
        self._gap = gap // SECTOR * SECTOR

    def current(self) -> int:
        return self._gap

    def observe(self, nbytes: int, seconds: float, in_flight: int = 1) -> None:
        pass


class AdaptiveGap:
    """The break-even gap ``a / b`` from the latencies of the requests the engine measures.

    A least-squares fit of ``latency = a' + b * bytes`` over the last ``window`` requests gives
    the byte cost ``b``. With ``C`` requests in flight on a saturated server or link, a request
    also waits for the other ``C - 1`` (their fixed costs and bytes), so the intercept is
    ``a' = a + (C - 1) * (a + b * mean_bytes)`` and the fixed cost of one more request is
    ``a = (a' - (C - 1) * b * mean_bytes) / C``. Refitted every ``every`` samples, smoothed,
    clamped to [4 KiB, 2 MiB]. Samples of one size (dense 4 MiB writes) cannot separate ``a``
    from ``b``; the gap then stays where it is.
    """

    def __init__(self, initial: int = DEFAULT_MERGE_GAP, window: int = 256, every: int = 32,
                 smoothing: float = 0.5) -> None:
        self._gap = initial
        self._samples: deque[tuple[int, float, int]] = deque(maxlen=window)
        self._every = every
        self._alpha = smoothing
        self._since = 0
        self._lock = threading.Lock()
        self.fits = 0  # how many times the model moved the gap (reported, and used by tests)
        self.request_s: float | None = None
        self.bytes_per_s: float | None = None

    def current(self) -> int:
        return self._gap

    def observe(self, nbytes: int, seconds: float, in_flight: int = 1) -> None:
        with self._lock:
            self._samples.append((nbytes, seconds, max(1, in_flight)))
            self._since += 1
            if self._since >= self._every:
                self._since = 0
                self._refit()

    def _refit(self) -> None:
        n = len(self._samples)
        if n < 8:
            return
        mx = sum(x for x, _, _ in self._samples) / n
        my = sum(y for _, y, _ in self._samples) / n
        c = sum(k for _, _, k in self._samples) / n
        sxx = sum((x - mx) ** 2 for x, _, _ in self._samples)
        if sxx < (64 * KIB) ** 2 * n:  # sizes too alike to separate request from byte cost
            return
        b = sum((x - mx) * (y - my) for x, y, _ in self._samples) / sxx
        if b <= 0:
            return
        a = max(0.0, (my - b * mx) - (c - 1) * b * mx) / c
        self.request_s, self.bytes_per_s = a, 1.0 / b
        estimate = min(MAX_ADAPTIVE_GAP, max(MIN_ADAPTIVE_GAP, a / b))
        smoothed = self._alpha * estimate + (1 - self._alpha) * self._gap
        self._gap = int(smoothed) // SECTOR * SECTOR
        self.fits += 1


@dataclass
class PlanStats:
    """Running totals of a plan (read by the engine's progress reporting while it runs)."""

    stream_size: int = 0
    scanned: int = 0  # stream bytes walked, in order (holes count as scanned)
    planned: int = 0  # bytes put into writes (non-zero runs plus merged zero gaps)
    present: int = 0  # bytes already on the destination, not resent
    writes: int = 0

    @property
    def zero_skipped(self) -> int:
        """Bytes not sent because they are zero (at the end of the plan)."""
        return self.stream_size - self.planned - self.present


class _Ranges:
    """A sorted, merged range list with fast window queries."""

    def __init__(self, ranges: list[Extent]) -> None:
        self.ranges = merge(ranges)
        self._ends = [r.end for r in self.ranges]

    def within(self, start: int, end: int) -> list[Extent]:
        i = bisect.bisect_right(self._ends, start)
        out = []
        while i < len(self.ranges) and self.ranges[i].start < end:
            out.append(self.ranges[i])
            i += 1
        return out

    def hits(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._ends, start)
        return i < len(self.ranges) and self.ranges[i].start < end


class Planner:
    """Walks the Azure stream in order and yields the Put Page writes.

    ``skip``: ranges already on the destination. ``hasher`` (any ``hashlib`` object) is fed the
    whole stream in order, zeros included, so Content-MD5 needs no second pass; with a hasher
    the skipped ranges are read too (they must be hashed), otherwise they are not read.
    ``max_write``: the largest Put Page (``vhdkit bench`` sweeps it); a multiple of 512, at most
    Azure's 4 MiB.
    """

    def __init__(self, view: AzureView, gap: GapPolicy, skip: list[Extent] | None = None,
                 hasher: _Hasher | None = None, max_write: int = MAX_WRITE) -> None:
        check_max_write(max_write)
        self.max_write = max_write
        self.view = view
        self.gap = gap
        self.skip = _Ranges(align_to_sectors(skip or [], view.stream_size))
        self.hasher = hasher
        self.stats = PlanStats(stream_size=view.stream_size)
        self.stats.present = sum(r.length for r in self.skip.ranges)
        self._start = 0
        self._end = 0
        self._parts: list[memoryview] = []

    def writes(self) -> Iterator[Write]:
        view, stats = self.view, self.stats
        extents = align_to_sectors(view.extents(), view.stream_size)
        to_read = extents if self.hasher is not None else subtract(extents, self.skip.ranges)
        for piece in split(to_read, CHUNK):
            self._hash_zeros(stats.scanned, piece.start)
            data = view.read_at(piece.start, piece.length)
            if self.hasher is not None:
                self.hasher.update(data)
            runs = nonzero_runs(data, piece.start)
            if runs and self.skip.ranges:
                runs = subtract(runs, self.skip.within(piece.start, piece.end))
            buf = memoryview(data)
            for run in runs:
                yield from self._add(run, buf, piece.start)
            stats.scanned = piece.end
        yield from self._flush()
        self._hash_zeros(stats.scanned, view.stream_size)
        stats.scanned = view.stream_size

    def _hash_zeros(self, start: int, end: int) -> None:
        if self.hasher is not None:
            pos = start
            while pos < end:
                n = min(end - pos, MAX_WRITE)
                self.hasher.update(_ZEROS[:n])
                pos += n
        self.stats.scanned = max(self.stats.scanned, end)

    def _add(self, run: Extent, buf: memoryview, base: int) -> Iterator[Write]:
        s, e = run.start, run.end
        while s < e:
            gap = s - self._end
            if (self._parts and gap <= self.gap.current()
                    and not (gap and self.skip.hits(self._end, s))):
                room = self.max_write - (self._end - self._start) - gap
                if room >= SECTOR:
                    take = min(room, e - s)
                    if gap:
                        self._parts.append(_ZEROS[:gap])
                    self._parts.append(buf[s - base : s - base + take])
                    self._end = s + take
                    s += take
                    continue
            yield from self._flush()
            take = min(self.max_write, e - s)
            self._start, self._end = s, s + take
            self._parts = [buf[s - base : s - base + take]]
            s += take

    def _flush(self) -> Iterator[Write]:
        if not self._parts:
            return
        parts, self._parts = self._parts, []
        whole = parts[0].obj if len(parts) == 1 else None
        # A write that is one whole chunk (dense data) is sent without a copy.
        data = whole if isinstance(whole, bytes) and len(whole) == len(parts[0]) else \
            b"".join(parts)
        self.stats.planned += len(data)
        self.stats.writes += 1
        yield Write(self._start, data)


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
