"""The ``vhdkit`` command. The cli package is the only place that prints or exits.

Each command lives in its own module and registers itself on :data:`main`; errors from the
library become one-line messages with exit code 2, 3 for network and authentication failures
(see ``_common.run``); click's usage errors are one line too (``_group``). A command's module is
imported only when that command runs (or when help lists them all), so ``vhdkit --version`` and
``vhdkit check`` do not pay for the Azure SDK, numpy or the pre-flight readers.
"""

from __future__ import annotations

import importlib
import os

# numpy links OpenBLAS, which starts a worker thread per core at import and lets them spin
# waiting for work. vhdkit does no linear algebra; on a 2-core machine those spinning threads
# took about a tenth of a convert's CPU from the copy. Set only here: the command owns its
# process, a program that imports the library keeps its own setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from .. import __version__
from . import _logging
from ._group import VhdkitGroup

#: command name -> module (in this package) that defines it
COMMANDS = {
    "bench": "bench_cmd",
    "check": "check_cmd",
    "convert": "convert_cmd",
    "inspect": "inspect_cmd",
    "preflight": "preflight_cmd",
    "upload": "upload_cmd",
}


class LazyGroup(VhdkitGroup):
    """A group whose commands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f".{module}", __name__)  # registers itself on ``main``
        return super().get_command(ctx, cmd_name)


@click.group(name="vhdkit", cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vhdkit")
@click.option("--debug", is_flag=True, envvar="VHDKIT_DEBUG",
              help="Log what vhdkit does, request by request, to stderr (secrets redacted).")
@click.option("--log-file", type=click.Path(dir_okay=False), metavar="FILE",
              envvar="VHDKIT_LOG_FILE", help="The same log, to FILE instead of stderr.")
def main(debug: bool, log_file: str | None) -> None:
    """Get disk images ready for Azure: inspect, check, convert, pre-flight, upload, bench.

    \b
    Exit codes: 0 ready / done, 1 not ready, 2 unreadable input or usage error,
    3 network or authentication failure.
    Environment: VHDKIT_CONCURRENCY, VHDKIT_PROGRESS_INTERVAL, VHDKIT_DEBUG, VHDKIT_LOG_FILE,
    AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY, AZURE_STORAGE_CONNECTION_STRING.
    """
    click.get_current_context().call_on_close(_logging.setup(debug, log_file))
