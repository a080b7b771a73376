"""The CI status line: with stderr not a terminal (a CI log, a pipe), progress is one plain line
every N seconds, like azcopy's, instead of a bar that a log shows as nothing or as noise.

    upload: 45.0 % of 64.00 MiB, sent 12.00 MiB (10.2 MiB/s), skipped 16.80 MiB, ETA 0:03

Units are IEC everywhere (KiB, MiB, GiB, MiB/s), the same as the terminal bar's.
"""

from __future__ import annotations

import time
from typing import TextIO

DEFAULT_INTERVAL_S = 10.0


def iec(n: float) -> str:
    """Bytes in IEC units with two decimals: ``1.88 MiB``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def rate(n: float) -> str:
    """Bytes per second in MiB/s (one unit, so consecutive lines compare at a glance)."""
    return f"{n / (1 << 20):.1f} MiB/s"


def clock(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or elapsed <= 0:
        return "?"
    return clock(elapsed * (total - done) / done)


def status_line(phase: str, done: int, total: int, elapsed: float, sent: int | None = None,
                skipped: int | None = None) -> str:
    """One status line; ``sent``/``skipped`` only for uploads (``done`` is the stream read)."""
    pct = 100.0 * done / total if total else 100.0
    parts = [f"{phase}: {pct:.1f} % of {iec(total)}"]
    if sent is not None:
        parts.append(f"sent {iec(sent)} ({rate(sent / elapsed if elapsed > 0 else 0)})")
    else:
        parts.append(f"done {iec(done)} ({rate(done / elapsed if elapsed > 0 else 0)})")
    if skipped is not None:
        parts.append(f"skipped {iec(skipped)}")
    if done >= total:
        parts.append(f"took {clock(elapsed)}")
    else:
        parts.append(f"ETA {eta(done, total, elapsed)}")
    return ", ".join(parts)


class StatusLines:
    """Prints a status line at most every ``interval`` seconds, and a last one at the end."""

    def __init__(self, phase: str, total: int, stream: TextIO, interval: float) -> None:
        self.phase, self.total, self.stream, self.interval = phase, total, stream, interval
        self.started = time.monotonic()
        self._next = self.started + interval
        self._last: tuple[int, int | None, int | None] = (0, None, None)
        self._printed: tuple[int, int | None, int | None] | None = None

    def update(self, done: int, sent: int | None = None, skipped: int | None = None) -> None:
        self._last = (done, sent, skipped)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._print(now)

    def close(self) -> None:
        """The final state, so that even a run shorter than the interval leaves one line."""
        if self._printed != self._last:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        done, sent, skipped = self._printed = self._last
        self.stream.write(status_line(self.phase, done, self.total, now - self.started, sent,
                                      skipped) + "\n")
        self.stream.flush()
