"""``vhdkit bench``: upload synthetic (or real) disks over a sweep of settings and measure."""

from __future__ import annotations

from dataclasses import replace

import click

from ..bench.runner import BenchConfig, BenchResult, BenchRun, run_bench, short_size
from ..bench.synthetic import parse_run_lengths
from ..errors import UsageError
from ..formats import open_disk
from ..sizes import parse_size
from ..upload import DEFAULT_MERGE_GAP, Progress
from ..upload.types import Target
from . import main
from ._common import emit, format_option, json_doc, run
from ._dest import destination_options, quiet_sdk_logs
from .progress import ProgressDisplay, interval_option

MIB = 1 << 20


def _list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise UsageError(f"{what}: give one or more values separated by commas")
    return items


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in _list(text, what))
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected whole numbers separated by commas") from None


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"data fraction {text!r}: expected a number in (0, 1]") from None


def _config(size: str, shapes: tuple[str, ...], fraction: str, run_lengths: str,
            disk: str | None, concurrency: str, max_write: str, merge_gap: str, repeat: str,
            keep: bool, seed: int) -> BenchConfig:
    """All options checked here, so bad input fails in one line before anything is sent."""
    if not shapes:
        shapes = ("disk",) if disk is not None else ("dense", "sparse")
    return BenchConfig(
        shapes=tuple(dict.fromkeys(shapes)), size=parse_size(size), fraction=_fraction(fraction),
        run_lengths=parse_run_lengths(run_lengths), disk=disk,
        concurrency=_ints(concurrency, "concurrency"),
        max_write=tuple(parse_size(x) for x in _list(max_write, "max write")),
        merge_gap=parse_size(merge_gap), repeat=_ints(repeat, "repeat")[0], keep=keep, seed=seed)


def _mib_s(n: float) -> str:
    return f"{n / MIB:.1f}"


def render(result: BenchResult) -> str:
    """An aligned table, one row per run."""
    head = ["shape", "conc", "write", "seconds", "eff MiB/s", "raw MiB/s", "writes/s",
            "retries", "CPU s/GB", "sent MiB", "planned MiB", "writes"]
    rows = [[r.shape, str(r.concurrency), short_size(r.max_write), f"{r.seconds:.2f}",
             _mib_s(r.effective_bytes_per_s), _mib_s(r.raw_bytes_per_s), f"{r.writes_per_s:.1f}",
             str(r.retries), f"{r.cpu_seconds_per_gb:.2f}", _mib_s(r.bytes_sent),
             _mib_s(r.bytes_planned), str(r.writes)] for r in result.runs]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    stream = result.runs[0].stream_size if result.runs else 0
    m = result.machine
    title = (f"vhdkit bench -> {result.destination}: {stream:,}-byte stream per run, "
             f"{m['cpu_count']} CPUs, Python {m['python']}")
    return "\n".join([title, line(head), *(line(r) for r in rows)])


class _RunProgress:
    """Each run's upload as a bar or status lines (``bench dense c4 w4M``)."""

    def __init__(self, quiet: bool, interval: float) -> None:
        self.quiet, self.interval = quiet, interval
        self.current: tuple[str, ProgressDisplay] | None = None
        self.done = 0

    def __call__(self, label: str, p: Progress) -> None:
        if self.current is None or self.current[0] != label or p.scanned < self.done:
            self.close()
            self.current = (label, ProgressDisplay(f"bench {label}", p.stream_size,
                                                   quiet=self.quiet, interval=self.interval))
        self.done = p.scanned
        skipped = p.scanned - p.planned
        self.current[1].update(skipped + p.sent, sent=p.sent, skipped=skipped)

    def close(self) -> None:
        if self.current is not None:
            self.current[1].close()
            self.current = None
        self.done = 0


def _progress(r: BenchRun) -> None:
    click.echo(f"bench: {r.shape} c={r.concurrency} w={short_size(r.max_write)}: "
               f"{r.seconds:.2f} s, {_mib_s(r.effective_bytes_per_s)} MiB/s effective, "
               f"{_mib_s(r.raw_bytes_per_s)} MiB/s sent", err=True)


@main.command("bench")
@destination_options(blob=False)
@click.option("--size", default="1G", show_default=True, metavar="SIZE",
              help="Virtual size of the synthetic disks (K, M, G; binary).")
@click.option("--shape", "shapes", multiple=True, metavar="dense|sparse|disk",
              help="Repeatable. dense: all data; sparse: --fraction of data in runs of "
              "--run-lengths; disk: the image given with --disk. [default: dense and sparse, "
              "or disk with --disk]")
@click.option("--fraction", default="0.1", show_default=True, metavar="F",
              help="Data fraction of a sparse disk.")
@click.option("--run-lengths", default="4K-64K", show_default=True, metavar="MIN-MAX",
              help="Lengths of a sparse disk's data runs (log-uniform).")
@click.option("--disk", type=click.Path(dir_okay=False), help="A real disk image (any format "
              "vhdkit reads) for --shape disk.")
@format_option("Read --disk as this format instead of detecting it ('raw' reads any file "
               "as it is).")
@click.option("--concurrency", default="1,4,8", show_default=True, metavar="N,N,...",
              help="Concurrent Put Page requests to sweep.")
@click.option("--max-write", default="4M", show_default=True, metavar="SIZE,SIZE,...",
              help="Largest Put Page sizes to sweep (multiples of 512, at most 4M).")
@click.option("--merge-gap", default=short_size(DEFAULT_MERGE_GAP), show_default=True,
              metavar="BYTES", help="Zero gap merged into one write, fixed for the sweep so "
              "that every run sends exactly its plan.")
@click.option("--repeat", default="1", show_default=True, metavar="N", help="Runs per combination.")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic data seed.")
@click.option("--json", "as_json", is_flag=True, help="Results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Chart of throughput against concurrency (needs matplotlib).")
@click.option("--keep", is_flag=True, help="Keep the blobs written (default: delete each).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no line per run on stderr.")
@interval_option
def bench_command(dest: Target, size: str, shapes: tuple[str, ...], fraction: str,
                  run_lengths: str, disk: str | None, fmt: str | None, concurrency: str,
                  max_write: str, merge_gap: str, repeat: str, seed: int, as_json: bool,
                  plot_path: str | None, keep: bool, quiet: bool,
                  progress_interval: float) -> None:
    """Measure upload speed for disk-shaped data.

    Uploads synthetic disks generated on the fly (or a real one) to fresh blobs
    vhdkit-bench-SHAPE-cN-wSIZE-RANDOM in --container (created if missing), for every
    shape x concurrency x max write size, and reports wall time, effective throughput (stream
    bytes/s), raw throughput (bytes sent/s), writes/s, retries and CPU seconds per GB of stream.
    The destination is --emulator, --account-url, --connection-string or a container SAS_URL.
    """
    from ..bench.plot import plot, require_matplotlib
    from ..bench.storage import BenchDestination

    quiet_sdk_logs()

    given = click.get_current_context().get_parameter_source("size")
    size_given = given is not None and given.name not in ("DEFAULT", "DEFAULT_MAP")

    def prepare() -> tuple[BenchConfig, BenchDestination]:
        if size_given and shapes and set(shapes) == {"disk"}:
            raise UsageError("--size sets the size of the synthetic shapes (dense, sparse); "
                             "--shape disk measures the --disk image at its own size")
        config = _config(size, shapes, fraction, run_lengths, disk, concurrency, max_write,
                         merge_gap, repeat, keep, seed)
        config = replace(config, disk_format=fmt)
        if config.disk is not None:  # a refused or damaged disk fails before anything is sent
            open_disk(config.disk, format=fmt).close()
        where = dest.resolve(required=True)
        assert where is not None
        if where.sas_url is None and not where.container:
            raise UsageError("--container is required with this destination")
        if plot_path is not None:
            if disk is not None:  # the chart never replaces the disk being measured
                from ..outputs import disk_files, refuse_output

                refuse_output(plot_path, disk_files(disk), "chart")
            require_matplotlib()
        return config, BenchDestination(where)

    config, target = run(prepare)
    runs = _RunProgress(quiet, progress_interval)

    def one_run(r: BenchRun) -> None:
        runs.close()
        if not quiet:
            _progress(r)

    try:
        result = run(lambda: run_bench(config, target, one_run, runs))
    finally:
        runs.close()
    if plot_path is not None:
        title = f"vhdkit bench: {short_size(config.size)} disks, {result.machine['cpu_count']} CPUs"
        run(lambda: plot(result.runs, plot_path, title))
    emit(json_doc(result.to_dict()) if as_json else render(result))
