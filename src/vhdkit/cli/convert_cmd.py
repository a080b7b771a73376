"""``vhdkit convert``: any disk to an Azure-ready fixed VHD, or an in-place repair of one."""

from __future__ import annotations

import sys

import click

from ..convert import ConvertResult, convert_disk, convert_in_place
from ..errors import UsageError, VhdkitError
from ..report import render_text
from ..sizes import parse_size
from . import main
from ._common import EXIT_NOT_READY, EXIT_OK, disk_option, emit, format_option, json_doc, run
from .progress import PhaseProgress, interval_option


def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except VhdkitError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.2f} {unit})"
    return f"{n:,} bytes"


def render(r: ConvertResult) -> str:
    if r.in_place:
        if r.unchanged:
            head = f"{r.destination}: already a fixed VHD of {_size(r.virtual_size)}; unchanged"
        else:
            head = (f"{r.destination}: grown in place from {_size(r.source_size)} to "
                    f"{_size(r.virtual_size)}")
        lines = [head]
        if r.recovered:
            lines.append("  completed an interrupted earlier in-place repair first")
        lines.append(f"  time:         {r.seconds:.2f} s")
        return "\n".join(lines)
    lines = [
        f"{r.source} -> {r.destination}",
        f"  input:        {r.input_kind}, virtual size {_size(r.source_size)}",
        f"  output:       fixed VHD, virtual size {_size(r.virtual_size)}"
        + (" (resized)" if r.virtual_size != r.source_size else ""),
        f"  data:         {_size(r.data_bytes)} scanned, {_size(r.bytes_written)} non-zero written",
        f"  on disk:      {_size(r.allocated_bytes)} allocated (zeros left as holes)",
        f"  time:         {r.seconds:.2f} s",
    ]
    if r.verified:
        lines.append(f"  verified:     data digest sha256 {r.digest} matches the source")
    if r.report is not None:
        lines.append(render_text(r.report))
    return "\n".join(lines)


@main.command(name="convert")
@click.argument("src", type=click.Path(dir_okay=True))
@click.argument("dst", required=False, type=click.Path(dir_okay=True))
@click.option("--size", metavar="SIZE", callback=_size_option, default=None,
              help="Virtual size of the output: bytes or 512M, 10G, 1T (binary units, whole "
                   "MiB). Default: the source's size rounded up to a whole MiB.")
@click.option("--force", is_flag=True, help="Replace DST if it exists.")
@click.option("--verify", is_flag=True,
              help="Re-read the output, compare its data digest with the source, run check.")
@click.option("--parent", type=click.Path(), help="Parent of a differencing SRC.")
@format_option("Read SRC as this format instead of detecting it ('raw' reads any file as "
               "it is).")
@click.option("--in-place", "in_place", is_flag=True,
              help="Grow the fixed VHD SRC to a whole MiB (or --size) without copying.")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no text summary.")
@interval_option
@disk_option
def convert_command(src: str, dst: str | None, size: int | None, force: bool, verify: bool,
                    parent: str | None, in_place: bool, as_json: bool, quiet: bool,
                    progress_interval: float, member: int | None, fmt: str | None) -> None:
    """Write SRC (any format vhdkit reads) to DST as a fixed VHD Azure accepts.

    \b
    vhdkit convert disk.vhdx disk.vhd
    vhdkit convert --size 30G disk.raw disk.vhd --verify
    vhdkit convert --in-place fixed.vhd
    """
    bars = PhaseProgress(quiet=quiet, interval=progress_interval)

    def work() -> ConvertResult:
        if in_place:
            if dst is not None:
                raise UsageError("--in-place takes one DISK and no DST")
            if parent or force or verify or fmt:
                raise UsageError("--in-place does not take --parent, --format, --force or "
                                 "--verify")
            return convert_in_place(src, size)
        if dst is None:
            raise UsageError("missing DST: vhdkit convert SRC DST (or --in-place DISK)")
        return convert_disk(src, dst, size, force=force, verify=verify, parent=parent,
                            progress=bars, member=member, format=fmt)

    try:
        result = run(work, src)
    finally:
        bars.close()
    if result.stale_temporaries_removed and not quiet:
        click.echo(f"vhdkit: notice: removed {len(result.stale_temporaries_removed)} temporary "
                   "file(s) left by killed runs: "
                   f"{', '.join(result.stale_temporaries_removed)}", err=True)
    if as_json:
        emit(json_doc(result.to_dict()))
    elif not quiet:
        emit(render(result))
    not_ready = result.report is not None and not result.report.ready
    sys.exit(EXIT_NOT_READY if not_ready else EXIT_OK)
