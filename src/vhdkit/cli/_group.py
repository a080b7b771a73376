"""The ``vhdkit`` group: every error, click's own usage errors included, is one line on stderr.

click prints a usage error as three or four lines (usage, a hint, the message); CI logs and
people read the last line only, so it is folded into ``vhdkit: error: COMMAND: message (see
vhdkit COMMAND --help)`` with exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from ._common import EXIT_INTERRUPTED, fail

#: click >= 8.2 raises this usage error for a group called without a command
_NO_ARGS_IS_HELP: type[click.UsageError] = getattr(click.exceptions, "NoArgsIsHelpError",
                                                   type("_Never", (click.UsageError,), {}))


class VhdkitGroup(click.Group):
    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # `vhdkit` alone: the help, as asked for
            assert exc.ctx is not None
            click.echo(exc.ctx.get_help())
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "vhdkit"
            fail(f"{where}: {exc.format_message()} (see {where} --help)")
        except click.ClickException as exc:  # e.g. FileError
            fail(exc.format_message())
        except click.exceptions.Abort:
            click.echo("vhdkit: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if not standalone_mode:
            return rv
        # --help and --version end here with their exit code (0); commands exit themselves
        sys.exit(rv if isinstance(rv, int) else 0)

