"""Shared CLI plumbing: error mapping, exit codes, output helpers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import NoReturn, TypeVar

import click

from ..errors import VhdkitError
from ..secrets import redact

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_ERROR = 2


def fail(message: str) -> NoReturn:
    """Print a one-line error (secrets redacted) and exit 2."""
    line = " ".join(redact(str(message)).split())
    click.echo(f"vhdkit: error: {line}", err=True)
    sys.exit(EXIT_ERROR)


def run(fn: Callable[[], T]) -> T:
    """Call ``fn``; turn vhdkit and OS errors into a one-line message and exit code 2."""
    try:
        return fn()
    except VhdkitError as exc:
        fail(str(exc))
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{':' if name else ''}{name}")
    except KeyboardInterrupt:
        click.echo("vhdkit: interrupted", err=True)
        sys.exit(130)


#: ``--disk N``: which disk of an OVA that holds several (the numbers ``inspect`` lists)
disk_option = click.option(
    "--disk", "member", type=click.IntRange(min=1), default=None, metavar="N",
    help="Which disk of an OVA holding several: 1 is the first (inspect lists them).")


def emit(text: str) -> None:
    click.echo(redact(text))


def write_text(path: str, text: str, protect: Iterable[str] = ()) -> None:
    """Write a report file (JUnit, JSON) for CI, atomically, never over an input disk in
    ``protect`` or a non-regular file; errors become exit 2 through ``run``."""
    from ..outputs import write_report

    run(lambda: write_report(path, text.encode("utf-8"), protect))


def refuse_report_path(path: str | None, disk: str, parent: str | None) -> None:
    """Exit 2 before any work when a report path is the disk or one of its parents."""
    if path is not None:
        from ..outputs import disk_files, refuse_output

        run(lambda: refuse_output(path, disk_files(disk, parent), "report"))


def format_option(help_text: str = "Read DISK as this format instead of detecting it ('raw' "
                  "reads any file as it is).") -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``--format``: force a reader (the keys of ``formats.opener.READERS``)."""
    from ..formats.opener import READERS

    return click.option("--format", "fmt", type=click.Choice(sorted(READERS)), default=None,
                        help=help_text)
