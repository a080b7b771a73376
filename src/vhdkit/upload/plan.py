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
import math
import threading
import time
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

    def widen(self) -> None:
        """The request rate is at its cap: merge across larger gaps from now on."""


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

    def widen(self) -> None:
        pass  # the user fixed the gap


class AdaptiveGap:
    """The break-even gap ``a / b`` from the requests the engine completes.

    A request costs the bottleneck (the server or the link) a fixed time ``a`` plus ``b`` per
    byte; sending a zero gap of ``g`` bytes instead of opening another request pays when
    ``g * b < a``. The model is fitted on *service* times, not latencies: with ``C`` requests in
    flight a request's latency is mostly waiting for the others (queueing), which made a fit of
    latency against size move the gap by 100x between runs on the same input. The spacing of
    completions is the bottleneck's time per request, without the queue: ``a + b * bytes``.

    That holds for a bottleneck that serves one request after another (a server's CPU). A link
    shared by all requests at once (processor sharing: a slow uplink) completes requests at a
    spacing set by everybody's bytes, not by the request's own size, so the spacing fit sees no
    per-byte cost and would merge across huge gaps. There a request's *latency* grows with its
    own size (``C`` requests share the link: ``rtt + C * b * bytes``). A FIFO server's latencies
    are inflated by the queue instead, which overstates ``rtt / (C * b)`` as a break-even; so
    when that estimate is still below the spacing fit's, the link is the bottleneck. On the link
    a request costs only its headers (its round trip, and the queue in front of the link, overlap
    the other writers' transfers), so every zero byte sent is a loss: the gap is the smallest.

    Robust all the way: the slope is a median of pairwise slopes (Theil-Sen), the intercept the
    median residual, the gap follows the median of the last ``history`` estimates (three at
    least) on a few
    candidate gaps (powers of two from 4 KiB to 2 MiB), one step (2x) per refit and only when that
    median is at least 2x away (hysteresis). Samples of one size (dense 4 MiB writes) cannot
    separate ``a`` from ``b``; the gap then stays where it is.
    """

    def __init__(self, initial: int = DEFAULT_MERGE_GAP, window: int = 256, every: int = 32,
                 history: int = 5) -> None:
        self._gap = initial
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)  # (bytes, spacing)
        self._latencies: deque[tuple[int, float]] = deque(maxlen=window)  # (bytes, latency)
        self._estimates: deque[float] = deque(maxlen=history)
        self._floor = 0  # raised by widen(): the request-rate cap needs fewer requests
        self._every = every
        self._since = 0
        self._last: float | None = None
        self._lock = threading.Lock()
        self.fits = 0  # refits that produced an estimate (reported, and used by tests)
        self.moves = 0  # times the gap changed
        self.request_s: float | None = None
        self.bytes_per_s: float | None = None
        self.bottleneck: str | None = None  # which fit chose the gap: "serial" or "shared link"

    def current(self) -> int:
        return self._gap

    def observe(self, nbytes: int, seconds: float, in_flight: int = 1,
                now: float | None = None) -> None:
        """A request of ``nbytes`` completed at ``now`` (default: the monotonic clock) after
        ``seconds``; ``in_flight`` requests were under way when it started."""
        done = time.monotonic() if now is None else now
        with self._lock:
            last, self._last = self._last, done
            # The first completion, or one after an idle spell, has no service time to offer.
            spacing = seconds if last is None or in_flight <= 1 else min(seconds, done - last)
            self._samples.append((nbytes, max(0.0, spacing)))
            self._latencies.append((nbytes, max(0.0, seconds)))
            self._since += 1
            if self._since >= self._every:
                self._since = 0
                self._refit()

    def model(self) -> dict[str, float | int | str | None]:
        """What the choice rests on, for ``--json``: why this gap was chosen."""
        return {"request_s": self.request_s, "bytes_per_s": self.bytes_per_s,
                "bottleneck": self.bottleneck,
                "fits": self.fits, "moves": self.moves, "samples": len(self._samples)}

    def widen(self) -> None:
        with self._lock:
            self._floor = _candidate(min(MAX_ADAPTIVE_GAP, self._gap * 2))
            self._gap = max(self._gap, self._floor)

    def _refit(self) -> None:
        fitted = _robust_fit(list(self._samples))
        if fitted is None:
            return
        a, b = fitted
        gap, self.bottleneck = a / b, "serial"
        shared = _robust_fit(list(self._latencies))
        if shared is not None and shared[0] / shared[1] < gap:  # a shared link: see above
            a, b = shared  # its round trip (with the queue), one request's share of the link
            gap, self.bottleneck = MIN_ADAPTIVE_GAP, "shared link"
        self.request_s, self.bytes_per_s = a, 1.0 / b
        self.fits += 1
        self._estimates.append(min(MAX_ADAPTIVE_GAP, max(MIN_ADAPTIVE_GAP, gap)))
        if len(self._estimates) < 3:
            return  # one or two estimates are noise, not evidence
        estimate = _median(list(self._estimates))
        if max(estimate, self._gap) < 2 * min(estimate, self._gap):
            return  # within 2x: stay
        self._gap = max(self._floor,
                        _candidate(self._gap * 2 if estimate > self._gap else self._gap / 2))
        self.moves += 1


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def _robust_fit(samples: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(a, b): per-request fixed cost and per-byte cost, or None if the samples cannot tell."""
    n = len(samples)
    if n < 8:
        return None
    by_size = sorted(samples)
    # Pair each sample with the one half the window further in size order: n/2 slopes, each over
    # a wide size difference, instead of all n^2 pairs.
    half = n // 2
    slopes = [(by_size[i + half][1] - by_size[i][1]) / (by_size[i + half][0] - by_size[i][0])
              for i in range(n - half) if by_size[i + half][0] - by_size[i][0] >= 16 * KIB]
    if len(slopes) < 4:
        return None  # sizes too alike to separate request from byte cost
    b = _median(slopes)
    if b <= 0:
        return None
    return max(0.0, _median([y - b * x for x, y in samples])), b


#: The gaps the adaptive model chooses from: a small set keeps the choice stable run to run.
CANDIDATE_GAPS = tuple(4 * KIB << i for i in range(10))  # 4 KiB .. 2 MiB


def _candidate(estimate: float) -> int:
    """The candidate gap nearest to ``estimate`` on a log scale."""
    estimate = min(MAX_ADAPTIVE_GAP, max(MIN_ADAPTIVE_GAP, estimate))
    return min(CANDIDATE_GAPS, key=lambda g: abs(math.log(g / estimate)))


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
    Azure's 4 MiB. ``cover``: ranges written even where the stream is zero (a used managed disk
    being overwritten keeps old data there; AzCopy writes zeros over it too).
    """

    def __init__(self, view: AzureView, gap: GapPolicy, skip: list[Extent] | None = None,
                 hasher: _Hasher | None = None, max_write: int = MAX_WRITE,
                 cover: list[Extent] | None = None) -> None:
        check_max_write(max_write)
        self.max_write = max_write
        self.view = view
        self.gap = gap
        self.skip = _Ranges(align_to_sectors(skip or [], view.stream_size))
        self.hasher = hasher
        self.stats = PlanStats(stream_size=view.stream_size)
        self.stats.present = sum(r.length for r in self.skip.ranges)
        self.cover = _Ranges(align_to_sectors(cover or [], view.stream_size))
        self._start = 0
        self._end = 0
        self._parts: list[memoryview] = []

    def writes(self) -> Iterator[Write]:
        view, stats = self.view, self.stats
        extents = align_to_sectors(view.extents(), view.stream_size)
        if self.cover.ranges:
            extents = merge([*extents, *self.cover.ranges])
        to_read = extents if self.hasher is not None else subtract(extents, self.skip.ranges)
        for piece in split(to_read, CHUNK):
            self._hash_zeros(stats.scanned, piece.start)
            data = view.read_at(piece.start, piece.length)
            if self.hasher is not None:
                self.hasher.update(data)
            runs = nonzero_runs(data, piece.start)
            stale = self.cover.within(piece.start, piece.end)
            if stale:
                runs = merge([*runs, *(Extent(max(r.start, piece.start),
                                              min(r.end, piece.end) - max(r.start, piece.start))
                                       for r in stale)])
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
