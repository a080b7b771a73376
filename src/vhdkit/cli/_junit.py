"""``--junit FILE`` and ``--junit-warnings`` for ``check`` and ``preflight``: the report as
JUnit XML, and, when the disk cannot be read at all (exit 2), a file with one error case so the
CI step shows why."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from ..errors import VhdkitError
from ..report import WARNINGS_AS, Report, WarningsAs
from ._common import (
    error_message,
    exit_code,
    fail,
    log_failure,
    refuse_report_path,
    write_text,
)

F = TypeVar("F", bound=Callable[..., Any])


def junit_options(fn: F) -> F:
    fn = click.option(
        "--junit-warnings", type=click.Choice(WARNINGS_AS), default="skip", show_default=True,
        envvar="VHDKIT_JUNIT_WARNINGS", show_envvar=True,
        help="How warnings show in the JUnit file: failed cases, skipped cases (listed by "
        "every CI viewer without failing the run, like the exit code) or passing ones.")(fn)
    return click.option(
        "--junit", type=click.Path(dir_okay=False), metavar="FILE",
        help="Write a JUnit XML file: one test case per rule, errors as failures (also when "
        "the disk is unreadable: one error case).")(fn)


class JunitRun:
    """Times the command on ``disk`` and writes the JUnit file for its report or for its
    failure; the file is refused up front when it is the disk or one of its parents."""

    def __init__(self, path: str | None, suite: str, warnings: WarningsAs, disk: str,
                 parent: str | None) -> None:
        self.path, self.suite, self.warnings = path, suite, warnings
        self.disk, self.parent = disk, parent
        refuse_report_path(path, disk, parent)  # before any work
        self.started = time.monotonic()
        self.timestamp = datetime.now(timezone.utc)

    def run(self, fn: Callable[[], Report]) -> Report:
        """``fn()``; on a vhdkit or OS error, the error case is written before exiting 2."""
        try:
            return fn()
        except (VhdkitError, OSError) as exc:
            log_failure(exc)
            message = error_message(exc, self.disk)
            if self.path is not None:
                from ..junit import render_junit_error  # only --junit needs the XML writer

                self._write(self.path, render_junit_error(
                    self.disk, self.suite, message, type(exc).__name__,
                    seconds=time.monotonic() - self.started, timestamp=self.timestamp))
            fail(message, exit_code(exc))

    def write(self, report: Report) -> None:
        if self.path is not None:
            from ..junit import render_junit

            self._write(self.path, render_junit(report, self.suite, warnings=self.warnings,
                                     seconds=time.monotonic() - self.started,
                                     timestamp=self.timestamp))

    def _write(self, path: str, xml: str) -> None:
        from ..outputs import disk_files

        write_text(path, xml, disk_files(self.disk, self.parent))
