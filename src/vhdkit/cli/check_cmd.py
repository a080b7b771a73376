"""``vhdkit check``: Azure readiness, with exit codes and JUnit for CI."""

from __future__ import annotations

import sys

import click

from ..check import check_path
from ..errors import VhdkitError
from ..expectations import EXPECTATIONS, Expect
from ..report import Finding, Report, WarningsAs, render_json, render_text
from . import main
from ._common import EXIT_NOT_READY, EXIT_OK, disk_option, emit, format_option
from ._junit import JunitRun, junit_options


@main.command()
@click.argument("disk", type=click.Path(readable=False))
@click.option("--parent", type=click.Path(), help="Parent of a differencing disk.")
@format_option()
@click.option("--os-disk", is_flag=True, help="Also apply Azure's OS-disk size limit.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
@junit_options
@click.option("--preflight", "with_preflight", is_flag=True,
              help="Also inspect the OS inside (as `vhdkit preflight`).")
@click.option("--expect", type=click.Choice(EXPECTATIONS), default="generalized",
              show_default=True, help="With --preflight: the OS state the image should be in.")
@click.option("-v", "--verbose", is_flag=True, help="Also list the rules that passed.")
@disk_option
def check(disk: str, parent: str | None, os_disk: bool, as_json: bool, junit: str | None,
          junit_warnings: WarningsAs, with_preflight: bool, expect: Expect, verbose: bool,
          member: int | None, fmt: str | None) -> None:
    """Judge whether DISK can be uploaded to Azure as is. Exit 0 ready, 1 not, 2 unreadable."""
    out = JunitRun(junit, "vhdkit.check", junit_warnings, disk, parent)

    def body() -> Report:
        report = check_path(disk, os_disk=os_disk, parent=parent, member=member, format=fmt)
        if with_preflight:
            from ..preflight.engine import preflight_path  # loads the OS readers

            try:
                report.extend(preflight_path(disk, parent, expect, member=member,
                                             format=fmt).findings)
            except VhdkitError as exc:  # the format findings already say what is wrong
                report.extend([Finding("preflight.unreadable", "error",
                                       f"cannot inspect the OS inside: {exc}")])
        return report

    report = out.run(body)
    out.write(report)
    emit(render_json(report) if as_json else render_text(report, verbose=verbose))
    sys.exit(EXIT_OK if report.ready else EXIT_NOT_READY)

