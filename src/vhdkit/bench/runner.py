"""The bench sweep: every shape x concurrency x maximum write size, uploaded to a fresh blob and
measured (wall time, effective and raw throughput, writes/s, retries, CPU per GB).

The merge gap is fixed during a sweep (an adaptive gap would move with the timings), so every
run sends exactly what a dry run of the same plan says (``bytes_sent == bytes_planned``; a
retried write counts once), and runs differ only in how fast they send it.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__
from ..azure_view import AzureView
from ..errors import UploadError, UsageError
from ..formats import VirtualDisk, open_disk
from ..sizes import check_size
from ..upload import DEFAULT_MERGE_GAP, Progress, UploadOptions, upload_view
from ..upload.types import MAX_WRITE, check_max_write
from .storage import BenchDestination
from .synthetic import SHAPES, SyntheticDisk

GB = 1_000_000_000  # CPU is reported per decimal GB of stream, like link speeds
MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class BenchConfig:
    """What to sweep. ``shapes``: 'dense', 'sparse', or 'disk' (the file ``disk``)."""

    shapes: tuple[str, ...] = ("dense", "sparse")
    size: int = 1 << 30
    fraction: float = 0.1
    run_lengths: tuple[int, int] = (4096, 65536)
    disk: str | None = None
    concurrency: tuple[int, ...] = (1, 4, 8)
    max_write: tuple[int, ...] = (MAX_WRITE,)
    merge_gap: int = DEFAULT_MERGE_GAP
    repeat: int = 1
    keep: bool = False
    seed: int = 0
    #: forces the reader of ``disk`` (``open_disk(format=...)``); None detects it
    disk_format: str | None = None

    def __post_init__(self) -> None:
        for shape in self.shapes:
            if shape not in (*SHAPES, "disk"):
                raise UsageError(f"shape {shape!r}: use dense, sparse or disk")
        if not self.shapes:
            raise UsageError("no shape to measure")
        if "disk" in self.shapes and self.disk is None:
            raise UsageError("--shape disk needs --disk PATH")
        if self.disk is not None and "disk" not in self.shapes:
            raise UsageError("--disk is measured only with --shape disk")
        check_size(self.size)
        if self.size <= 0 or self.size % 512:
            raise UsageError(f"size {self.size}: must be a positive multiple of 512")
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"data fraction {self.fraction}: must be in (0, 1]")
        if not self.concurrency or any(not 1 <= c <= MAX_CONCURRENCY for c in self.concurrency):
            raise UsageError(f"concurrency: each value must be 1 to {MAX_CONCURRENCY}")
        if not self.max_write:
            raise UsageError("no maximum write size to measure")
        for w in self.max_write:
            check_max_write(w)
        if self.merge_gap < 0 or self.merge_gap % 512:
            raise UsageError(f"merge gap {self.merge_gap}: must be a non-negative multiple of "
                             "512")
        if self.repeat < 1:
            raise UsageError("repeat must be at least 1")


@dataclass
class BenchRun:
    """One measured upload."""

    shape: str
    concurrency: int
    max_write: int
    repeat: int
    blob: str
    stream_size: int
    bytes_planned: int
    bytes_sent: int
    writes: int
    retries: int
    seconds: float
    effective_bytes_per_s: float  # stream bytes / s: what the user waits for
    raw_bytes_per_s: float  # bytes on the wire / s
    writes_per_s: float
    cpu_seconds: float
    cpu_seconds_per_gb: float  # user + system CPU of this process per GB of stream
    merge_gap: int
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchResult:
    machine: dict[str, Any]
    config: dict[str, Any]
    destination: str
    runs: list[BenchRun] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "config": self.config,
                "destination": self.destination, "runs": [r.to_dict() for r in self.runs]}


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(), "machine": platform.machine(),
            "vhdkit": __version__}


def short_size(n: int) -> str:
    """4194304 -> '4M', 524288 -> '512K' (blob names and labels)."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


@contextmanager
def open_shape(config: BenchConfig, shape: str) -> Iterator[VirtualDisk]:
    if shape == "disk":
        assert config.disk is not None
        with open_disk(config.disk, format=config.disk_format) as disk:
            yield disk
        return
    yield SyntheticDisk(config.size, shape, config.fraction, config.run_lengths, config.seed)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def plan_bytes(view: AzureView, config: BenchConfig, max_write: int) -> int:
    """What a dry run of the same plan says must be sent."""
    opts = UploadOptions(merge_gap=config.merge_gap, max_write=max_write, dry_run=True)
    return upload_view(view, None, opts).bytes_sent


def measure(view: AzureView, dest: BenchDestination, config: BenchConfig, shape: str,
            concurrency: int, max_write: int, planned: int, repeat: int,
            on_progress: Callable[[Progress], None] | None = None) -> BenchRun:
    """Upload ``view`` once to a fresh blob; delete it afterwards unless ``config.keep``."""
    name = f"vhdkit-bench-{shape}-c{concurrency}-w{short_size(max_write)}-{uuid.uuid4().hex[:8]}"
    blob = dest.blob(name, concurrency)
    opts = UploadOptions(concurrency=concurrency, merge_gap=config.merge_gap, max_write=max_write)
    try:
        cpu0, t0 = _cpu(), time.perf_counter()
        try:
            result = upload_view(view, blob, opts, on_progress=on_progress)
        except UploadError as exc:
            # The upload's own advice (rerun to resume) does not apply: the blob is deleted.
            inner = exc.__cause__ if isinstance(exc.__cause__, UploadError) else exc
            raise UploadError(f"bench run {name}: {inner}") from exc
        seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    finally:
        try:
            if not config.keep:
                dest.delete(blob)
        finally:
            blob.close()
    stream = view.stream_size
    return BenchRun(
        shape=shape, concurrency=concurrency, max_write=max_write, repeat=repeat, blob=name,
        stream_size=stream, bytes_planned=planned, bytes_sent=result.bytes_sent,
        writes=result.writes, retries=result.retries, seconds=round(seconds, 4),
        effective_bytes_per_s=round(stream / seconds, 1),
        raw_bytes_per_s=round(result.bytes_sent / seconds, 1),
        writes_per_s=round(result.writes / seconds, 2), cpu_seconds=round(cpu, 4),
        cpu_seconds_per_gb=round(cpu / (stream / GB), 4), merge_gap=config.merge_gap,
        kept=config.keep)


def run_bench(config: BenchConfig, dest: BenchDestination,
              on_run: Callable[[BenchRun], None] | None = None,
              on_progress: Callable[[str, Progress], None] | None = None) -> BenchResult:
    """The whole sweep, in the order shape x concurrency x max write x repeat.

    ``on_progress(label, progress)`` follows each run's upload (label: shape, c, w)."""
    result = BenchResult(machine(), asdict(config), destination=dest.setup())
    for shape in config.shapes:
        with open_shape(config, shape) as disk:
            view = AzureView.of(disk)
            plans: dict[int, int] = {}
            for concurrency in config.concurrency:
                for max_write in config.max_write:
                    if max_write not in plans:
                        plans[max_write] = plan_bytes(view, config, max_write)
                    label = f"{shape} c{concurrency} w{short_size(max_write)}"
                    follow = (None if on_progress is None else
                              functools.partial(on_progress, label))
                    for i in range(config.repeat):
                        run = measure(view, dest, config, shape, concurrency, max_write,
                                      plans[max_write], i, follow)
                        result.runs.append(run)
                        if on_run is not None:
                            on_run(run)
    return result
