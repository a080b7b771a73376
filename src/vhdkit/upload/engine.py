"""The upload engine: one reader feeding N concurrent writers through a bounded queue.

Memory is bounded by the writes in flight (queue size + one per writer, each at most 4 MiB).
Transient failures are retried with exponential backoff and jitter within a long budget (as
AzCopy: 20 tries, waits up to 60 s, 15 minutes); the first hard failure stops the reader and the
writers cleanly. What was written stays written, so a rerun resumes.

Being a good citizen of a shared storage account: when the service throttles (503 ServerBusy,
500 OperationTimedOut, 429) the whole engine's concurrency drops multiplicatively and comes back
one writer per window of successes (AIMD); and requests are paced under a per-blob rate cap
(Azure's target is about 500 requests/s per blob) -- when the pacing holds writers back, the merge
gap grows instead, so the plan needs fewer, larger requests.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import NetworkError, UploadError, VhdkitError
from .plan import GapPolicy
from .types import PageWriter, TransientError, Write

DEFAULT_CONCURRENCY = 8
PROGRESS_INTERVAL_S = 0.2


#: Azure's scalability target for one blob.
BLOB_REQUEST_RATE = 500.0
#: Multiplicative decrease of the concurrency on throttling (AzCopy's pacer uses about 0.65).
DECREASE = 0.65


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits U(d/2, d), d = min(cap, base * 2**n);
    at most ``attempts`` tries per request, none starting after ``budget_s`` from its first."""

    attempts: int = 20
    base_s: float = 1.0
    cap_s: float = 60.0
    budget_s: float = 15 * 60.0

    def delay(self, attempt: int) -> float:
        d = min(self.cap_s, self.base_s * 2**attempt)
        return random.uniform(d / 2, d)


class Pacer:
    """AIMD concurrency shared by all writers, plus a request-rate cap.

    ``limit`` writers may send at once; a throttling answer cuts it by ``DECREASE`` (at most once
    per round of requests that were already in flight), each success adds ``1 / limit``, so a
    full window of successes gives one writer back. ``rate``: requests per second, ``byte_rate``:
    body bytes per second (a blob's or disk's throughput target); None = no cap.
    """

    def __init__(self, concurrency: int, rate: float | None = None,
                 byte_rate: float | None = None) -> None:
        self.max = concurrency
        self.limit = float(concurrency)
        self.lowest = concurrency
        self.throttles = 0
        self.rate = rate
        self.byte_rate = byte_rate
        self._next_byte = time.monotonic()
        self.rate_waits = 0  # requests that waited for the rate cap
        self._cond = threading.Condition()
        self._active = 0
        self._epoch = 0  # bumped on every decrease
        self._next_slot = time.monotonic()

    def acquire(self, stop: threading.Event, nbytes: int = 0) -> int | None:
        """Wait for a slot; returns the epoch to hand back to :meth:`release` (None: stopped)."""
        with self._cond:
            while self._active >= max(1, int(self.limit)):
                if stop.is_set():
                    return None
                self._cond.wait(0.1)
            self._active += 1
            epoch = self._epoch
            wait = 0.0
            if self.rate:
                now = time.monotonic()
                self._next_slot = max(self._next_slot, now) + 1.0 / self.rate
                wait = self._next_slot - 1.0 / self.rate - now
                if wait > 0:
                    self.rate_waits += 1
            if self.byte_rate:
                now = time.monotonic()
                start = max(self._next_byte, now)
                self._next_byte = start + nbytes / self.byte_rate
                wait = max(wait, start - now)
        if wait > 0 and stop.wait(wait):
            self.release(epoch, ok=False)
            return None
        return epoch

    def release(self, epoch: int, *, ok: bool, throttled: bool = False) -> None:
        with self._cond:
            self._active -= 1
            if throttled:
                self.throttles += 1
                if epoch == self._epoch:  # one cut per round, not one per failed request
                    self._epoch += 1
                    self.limit = max(1.0, self.limit * DECREASE)
                    self.lowest = min(self.lowest, int(self.limit))
            elif ok:
                self.limit = min(float(self.max), self.limit + 1.0 / self.limit)
            self._cond.notify_all()

    @property
    def current(self) -> int:
        return max(1, int(self.limit))


@dataclass
class EngineStats:
    sent: int = 0  # bytes acknowledged by the destination
    writes: int = 0
    retries: int = 0
    throttled: int = 0  # throttling answers (503 ServerBusy, 500 OperationTimedOut, 429)
    lowest_concurrency: int = 0  # the engine's lowest concurrency after throttling
    rate_waits: int = 0  # requests held back by the per-blob request-rate cap
    request_s: float = 0.0  # summed wall time of successful requests
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Engine:
    """Runs a stream of writes against a :class:`PageWriter`."""

    def __init__(self, writer: PageWriter, *, concurrency: int = DEFAULT_CONCURRENCY,
                 retry: RetryPolicy | None = None, gap: GapPolicy | None = None,
                 on_progress: Callable[[EngineStats], None] | None = None,
                 rate: float | None = None, byte_rate: float | None = None) -> None:
        if concurrency < 1:
            raise UploadError("concurrency must be at least 1")
        self.writer = writer
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.pacer = Pacer(concurrency, rate, byte_rate)
        self._rate_waits_seen = 0
        self.gap = gap
        self.on_progress = on_progress
        self.stats = EngineStats()
        self._queue: queue.Queue[Write | None] = queue.Queue(maxsize=concurrency)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._in_flight = 0

    def run(self, writes: Iterator[Write]) -> EngineStats:
        """Send every write; raise the first hard failure after all threads have stopped."""
        threads = [threading.Thread(target=self._read, args=(writes,), name="vhdkit-reader",
                                    daemon=True)]
        threads += [threading.Thread(target=self._write_loop, name=f"vhdkit-writer-{i}",
                                     daemon=True) for i in range(self.concurrency)]
        self.stats = EngineStats()
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(PROGRESS_INTERVAL_S)
                    self._progress()
        except BaseException:  # Ctrl-C: stop the threads, then let it propagate
            self._fail(UploadError("interrupted"))
            for t in threads:
                t.join(5)
            raise
        self.stats.finished = time.monotonic()
        self._progress()
        if self._error is not None:
            err = self._error
            if isinstance(err, VhdkitError):
                raise err
            raise UploadError(f"upload failed: {err}") from err
        return self.stats

    def _progress(self) -> None:
        p = self.pacer
        self.stats.throttled = p.throttles
        self.stats.lowest_concurrency = p.lowest
        self.stats.rate_waits = p.rate_waits
        if self.gap is not None and p.rate_waits > self._rate_waits_seen + self.concurrency:
            # The rate cap holds writers back: fewer, larger requests instead.
            self._rate_waits_seen = p.rate_waits
            self.gap.widen()
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop.set()

    def _read(self, writes: Iterator[Write]) -> None:
        try:
            for w in writes:
                while not self._stop.is_set():
                    try:
                        self._queue.put(w, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    break
        except BaseException as exc:  # a read or format error ends the upload cleanly
            self._fail(exc)
        finally:
            for _ in range(self.concurrency):
                self._queue.put(None)  # writers drain the queue, so this cannot block for long

    def _write_loop(self) -> None:
        while True:
            w = self._queue.get()
            if w is None:
                return
            if self._stop.is_set():
                continue  # drain without writing
            try:
                self._send(w)
            except BaseException as exc:
                self._fail(exc)

    def _send(self, w: Write) -> None:
        attempt = 0
        deadline = time.monotonic() + self.retry.budget_s
        while True:
            epoch = self.pacer.acquire(self._stop, len(w.data))
            if epoch is None:
                return
            with self._lock:
                self._in_flight += 1
                in_flight = self._in_flight
            t0 = time.perf_counter()
            try:
                self.writer.put_page(w.offset, w.data)
            except TransientError as exc:
                with self._lock:
                    self._in_flight -= 1
                self.pacer.release(epoch, ok=False, throttled=exc.throttled)
                attempt += 1
                wait = self.retry.delay(attempt - 1)
                if attempt >= self.retry.attempts or time.monotonic() + wait > deadline:
                    raise NetworkError(f"giving up after {attempt} attempts in "
                                       f"{time.monotonic() - deadline + self.retry.budget_s:.0f} s "
                                       f"at offset {w.offset}: {exc}") from exc
                with self._lock:
                    self.stats.retries += 1
                if self._stop.wait(wait):
                    return
                continue
            except BaseException:
                with self._lock:
                    self._in_flight -= 1
                self.pacer.release(epoch, ok=False)
                raise
            dt = time.perf_counter() - t0
            self.pacer.release(epoch, ok=True)
            with self._lock:
                self._in_flight -= 1
                self.stats.sent += len(w.data)
                self.stats.writes += 1
                self.stats.request_s += dt
            if self.gap is not None:
                self.gap.observe(len(w.data), dt, in_flight)
            return
