"""``--plot FILE.png``: effective throughput against concurrency, one line per shape (and write
size). matplotlib is an optional extra, imported only here and only when a plot is asked for."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from ..errors import UsageError
from ..outputs import write_report
from .runner import BenchRun, short_size

MIB = 1 << 20
_STYLES = ("-", "--", ":", "-.")


def require_matplotlib() -> None:
    """Fail before the sweep, not after it, when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (in vhdkit's "
                         "environment; from a vhdkit checkout: pip install '.[plot]')") from exc


def plot(runs: list[BenchRun], path: str, title: str = "vhdkit bench") -> None:
    """Write a PNG of mean effective MiB/s per concurrency, one line per (shape, write size)."""
    require_matplotlib()
    # The object API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        series[(r.shape, r.max_write)][r.concurrency].append(r.effective_bytes_per_s / MIB)
    writes = sorted({w for _, w in series}, reverse=True)
    shapes = list(dict.fromkeys(shape for shape, _ in series))
    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax: Any = fig.add_subplot()
    for (shape, write), points in series.items():
        xs = sorted(points)
        ys = [sum(points[x]) / len(points[x]) for x in xs]
        label = f"{shape}, {short_size(write)} writes" if len(writes) > 1 else shape
        # One colour per shape, one dash pattern per write size.
        ax.plot(xs, ys, marker="o", label=label, color=f"C{shapes.index(shape) % 10}",
                linestyle=_STYLES[writes.index(write) % len(_STYLES)])
    levels = sorted({r.concurrency for r in runs})
    ax.set_xticks(levels)
    ax.set_xlabel("concurrent writes")
    ax.set_ylabel("effective throughput (MiB/s of stream)")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_report(path, buf.getvalue())
