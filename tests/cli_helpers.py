"""Run the vhdkit command in-process and return (exit code, stdout, stderr)."""

from __future__ import annotations

from click.testing import CliRunner

from vhdkit.cli import main


def vhdkit(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, list(args), input=stdin, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"vhdkit {' '.join(args)} raised {result.exception!r}")
    return result.exit_code, result.stdout, result.stderr
