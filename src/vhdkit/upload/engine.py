"""The upload engine: one reader feeding N concurrent writers through a bounded queue.

Memory is bounded by the writes in flight (queue size + one per writer, each at most 4 MiB).
Transient failures are retried with exponential backoff and jitter; the first hard failure
stops the reader and the writers cleanly. What was written stays written, so a rerun resumes.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import UploadError, VhdkitError
from .plan import GapPolicy
from .types import PageWriter, TransientError, Write

DEFAULT_CONCURRENCY = 8
PROGRESS_INTERVAL_S = 0.2


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits U(d/2, d), d = min(cap, base * 2**n)."""

    attempts: int = 10
    base_s: float = 0.1
    cap_s: float = 8.0

    def delay(self, attempt: int) -> float:
        d = min(self.cap_s, self.base_s * 2**attempt)
        return random.uniform(d / 2, d)


@dataclass
class EngineStats:
    sent: int = 0  # bytes acknowledged by the destination
    writes: int = 0
    retries: int = 0
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
                 on_progress: Callable[[EngineStats], None] | None = None) -> None:
        if concurrency < 1:
            raise UploadError("concurrency must be at least 1")
        self.writer = writer
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
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
        while True:
            with self._lock:
                self._in_flight += 1
                in_flight = self._in_flight
            t0 = time.perf_counter()
            try:
                self.writer.put_page(w.offset, w.data)
            except TransientError as exc:
                with self._lock:
                    self._in_flight -= 1
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise UploadError(f"giving up after {attempt} attempts at offset "
                                      f"{w.offset}: {exc}") from exc
                with self._lock:
                    self.stats.retries += 1
                if self._stop.wait(self.retry.delay(attempt - 1)):
                    return
                continue
            except BaseException:
                with self._lock:
                    self._in_flight -= 1
                raise
            dt = time.perf_counter() - t0
            with self._lock:
                self._in_flight -= 1
                self.stats.sent += len(w.data)
                self.stats.writes += 1
                self.stats.request_s += dt
            if self.gap is not None:
                self.gap.observe(len(w.data), dt, in_flight)
            return
