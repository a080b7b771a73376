"""Progress of a long phase (upload, convert, verify, a bench run), drawn for who is watching:

- a terminal: a tqdm bar in IEC units whose text fits 80 columns (the bar takes what is left);
- anything else (a CI log, a pipe): a status line every ``--progress-interval`` seconds
  (:mod:`.statusline`), and one at the end;
- ``--quiet``: nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import click

from .statusline import DEFAULT_INTERVAL_S, StatusLines, clock, eta, iec, rate

F = TypeVar("F", bound=Callable[..., Any])
#: the bar's text left of the bar and right of it; everything but the bar fits 80 columns
BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {stats}"


def interval_option(fn: F) -> F:
    opt = click.option(
        "--progress-interval", type=click.FloatRange(min=0.01), default=DEFAULT_INTERVAL_S,
        show_default=True, envvar="VHDKIT_PROGRESS_INTERVAL", show_envvar=True,
        metavar="SECONDS", help="When stderr is not a terminal (CI): a status line every "
        "SECONDS (percent, sent, skipped, rate, ETA).")
    return opt(fn)


def _tqdm_class() -> Any:
    from tqdm import tqdm  # only when a bar is drawn: saves its import time otherwise

    class Tqdm(tqdm):  # type: ignore[misc]
        """tqdm whose right-hand text is vhdkit's own (``{stats}``): tqdm's size and rate
        fields mix SI prefixes with binary scaling (``143MB/s`` next to ``1.88MiB``)."""

        stats = ""

        @property
        def format_dict(self) -> dict[str, Any]:
            d: dict[str, Any] = super().format_dict
            d["stats"] = self.stats
            return d

    return Tqdm


class _Bar:
    def __init__(self, phase: str, total: int, stream: TextIO, interval: float) -> None:
        self.total = total
        self.started = time.monotonic()
        self.bar: Any = _tqdm_class()(total=total, desc=f"{phase} ", bar_format=BAR_FORMAT,
                                      file=stream, leave=False, dynamic_ncols=True,
                                      mininterval=min(0.2, interval))
        self.update(0, None, None)

    def update(self, done: int, sent: int | None, skipped: int | None) -> None:
        elapsed = time.monotonic() - self.started
        # "28.80/64.00 MiB sent 12.00 MiB 10.2 MiB/s ETA 0:03": at most ~55 columns
        text = f" {iec(done).split()[0]}/{iec(self.total)}"
        if sent is not None:
            text += f" sent {iec(sent)} {rate(sent / elapsed if elapsed > 0 else 0)}"
        else:
            text += f" {rate(done / elapsed if elapsed > 0 else 0)}"
        text += f" ETA {eta(done, self.total, elapsed)}"
        self.bar.stats = text.strip()
        self.bar.update(done - self.bar.n)
        if done >= self.total:
            self.bar.refresh()  # the finished state is drawn, however fast the phase was

    def close(self) -> None:
        self.bar.close()


class ProgressDisplay:
    """``update(done, sent=, skipped=)`` as the phase goes, ``close()`` at its end."""

    def __init__(self, phase: str, total: int, *, quiet: bool, interval: float,
                 stream: TextIO | None = None) -> None:
        out = stream or sys.stderr
        self._impl: _Bar | StatusLines | None = None
        if quiet:
            return
        if out.isatty():
            self._impl = _Bar(phase, total, out, interval)
        else:
            self._impl = StatusLines(phase, total, out, interval)

    def update(self, done: int, sent: int | None = None, skipped: int | None = None) -> None:
        if self._impl is not None:
            self._impl.update(done, sent, skipped)

    def close(self) -> None:
        if self._impl is not None:
            self._impl.close()
            self._impl = None


class PhaseProgress:
    """A progress callback ``(phase, done, total)`` (convert's) drawing one display per phase."""

    def __init__(self, *, quiet: bool, interval: float) -> None:
        self.quiet, self.interval = quiet, interval
        self.current: tuple[str, ProgressDisplay] | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.current is None or self.current[0] != phase:
            self.close()
            self.current = (phase, ProgressDisplay(phase, total, quiet=self.quiet,
                                                   interval=self.interval))
        self.current[1].update(done)

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None


__all__ = ["PhaseProgress", "ProgressDisplay", "clock", "interval_option"]
