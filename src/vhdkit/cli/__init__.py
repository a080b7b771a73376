"""The ``vhdkit`` command. The cli package is the only place that prints or exits.

Each command lives in its own module and registers itself on :data:`main`; errors from the
library become one-line messages with exit code 2 (see ``_common.run``).
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vhdkit")
def main() -> None:
    """Get disk images ready for Azure: inspect, check, convert, pre-flight, upload, bench."""


# Command modules register themselves on ``main`` when imported.
from . import commands  # noqa: E402,F401
