"""Shared CLI plumbing: error mapping, exit codes, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import click

from ..errors import FormatError, NetworkError, UnsupportedDisk, VhdkitError
from ..secrets import redact

T = TypeVar("T")

EXIT_OK = 0
EXIT_NOT_READY = 1
EXIT_ERROR = 2
#: the storage service could not be reached or refused the credentials (retry later, fix auth)
EXIT_NETWORK = 3
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print a one-line error (secrets redacted) and exit ``code`` (2 unless told)."""
    line = " ".join(redact(str(message)).split())
    click.echo(f"vhdkit: error: {line}", err=True)
    sys.exit(code)


def about(subject: str | None, message: str) -> str:
    """``message`` naming the file it is about: prefixed with ``subject`` unless it names it."""
    if not subject or subject in message:
        return message
    return f"{subject}: {message}"


def error_message(exc: BaseException, subject: str | None = None) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, VhdkitError):
        name = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{':' if name else ''}{name}"
    if isinstance(exc, FormatError | UnsupportedDisk):  # about the disk: name it
        return about(subject, str(exc))
    return str(exc)


def exit_code(exc: BaseException) -> int:
    """3 for network and authentication failures, 2 for everything else that failed."""
    return EXIT_NETWORK if isinstance(exc, NetworkError) else EXIT_ERROR


def run(fn: Callable[[], T], subject: str | None = None) -> T:
    """Call ``fn``; turn vhdkit and OS errors into a one-line message (naming ``subject``, the
    file the command is about, when the message does not) and exit code 2 (3: network)."""
    try:
        return fn()
    except (VhdkitError, OSError) as exc:
        log_failure(exc)
        fail(error_message(exc, subject), exit_code(exc))
    except KeyboardInterrupt:
        click.echo("vhdkit: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


def log_failure(exc: BaseException) -> None:
    """With --debug/--log-file, the failure with its chain goes to the (redacting) log."""
    import logging

    logging.getLogger("vhdkit").debug("command failed", exc_info=exc)


#: the ``schema`` of every --json document (docs/JSON.md): bumped when a key changes meaning
JSON_SCHEMA = 1


def json_doc(doc: dict[str, Any]) -> str:
    """A --json document: ``schema`` first, then the command's keys."""
    return json.dumps({"schema": JSON_SCHEMA, **doc}, indent=2)


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
