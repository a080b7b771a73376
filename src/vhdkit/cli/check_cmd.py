"""``vhdkit check``: Azure readiness, with exit codes and JUnit for CI."""

from __future__ import annotations

import sys

import click

from ..check import check_path
from ..report import render_json, render_junit, render_text
from . import main
from ._common import EXIT_NOT_READY, EXIT_OK, emit, run


@main.command()
@click.argument("disk", type=click.Path(readable=False))
@click.option("--parent", type=click.Path(), help="Parent of a differencing disk.")
@click.option("--os-disk", is_flag=True, help="Also apply Azure's OS-disk size limit.")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False, writable=True),
              help="Write a JUnit XML file: one test case per rule, errors as failures.")
@click.option("-v", "--verbose", is_flag=True, help="Also list the rules that passed.")
def check(disk: str, parent: str | None, os_disk: bool, as_json: bool, junit: str | None,
          verbose: bool) -> None:
    """Judge whether DISK can be uploaded to Azure as is. Exit 0 ready, 1 not, 2 unreadable."""
    report = run(lambda: check_path(disk, os_disk=os_disk, parent=parent))
    if junit:
        xml = render_junit(report, suite="vhdkit.check")
        run(lambda: _write(junit, xml))
    emit(render_json(report) if as_json else render_text(report, verbose=verbose))
    sys.exit(EXIT_OK if report.ready else EXIT_NOT_READY)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
