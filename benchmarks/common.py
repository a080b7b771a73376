"""Helpers shared by the benchmark parts: timing, /proc counters, and goal records.

Each part prints markdown to stdout and, given ``--goals FILE``, writes the issue goals it
measured as JSON; benchmarks/run_all.py turns those into the summary of RESULTS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Goal:
    """One target from an issue's Performance section and what this run measured."""

    issue: str  # "Foundation", "Convert", "Upload", "Pre-flight"
    name: str  # what was measured
    target: str  # the goal as the issue states it
    measured: str
    met: bool | None  # None: recorded only, the issue sets no threshold


@dataclass(frozen=True)
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the process and its children
    peak_rss: int  # bytes


def timed(cmd: list[str]) -> Run:
    """One child process, timed from a settled device: ``sync`` first, so that no run pays for
    the writeback of the data an earlier run (of any tool) left dirty in the page cache."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {status}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def save_goals(path: str | None, goals: list[Goal]) -> None:
    if path:
        Path(path).write_text(json.dumps([asdict(g) for g in goals], indent=2))


def load_goals(path: Path) -> list[Goal]:
    if not path.exists():
        return []
    return [Goal(**g) for g in json.loads(path.read_text())]


def median_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall seconds of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rchar() -> int:
    """Bytes this process has read through read-like syscalls (/proc/self/io)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def bytes_read(fn: Callable[[], object]) -> int:
    """Bytes ``fn`` reads, less what reading the counter itself costs."""
    base0 = rchar()
    base = rchar() - base0
    before = rchar()
    fn()
    return max(0, rchar() - before - base)


def ratio(x: float) -> str:
    """A ratio for tables: 0.012×, 0.37×, 1.03×, 79×."""
    if x >= 10:
        return f"{x:.0f}×"
    if x >= 0.1:
        return f"{x:.2f}×"
    return f"{x:.2g}×"
