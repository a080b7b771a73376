"""``--debug`` / ``--log-file``: request-level logs of vhdkit, the Azure SDK and urllib3, with
every secret shape (SAS ``sig``, account keys, connection-string keys, bearer tokens) and every
secret the command was given removed from each formatted record, tracebacks included."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from ..secrets import redact

#: loggers whose records reach the handler: vhdkit's own, the SDK's HTTP policy, the socket layer
LOGGERS = ("vhdkit", "azure", "urllib3")
_secrets: list[str] = []


def add_secrets(values: list[str]) -> None:
    """Literal secrets of this run (a key from the environment has no recognisable shape)."""
    _secrets.extend(v for v in values if v and v not in _secrets)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), _secrets)


def setup(debug: bool, log_file: str | None) -> Callable[[], None]:
    """Send the loggers' records through one redacting handler; returns the undo (the CLI
    runs it when the command ends, so an in-process caller keeps its own logging)."""
    if not debug and log_file is None:
        return lambda: None
    handler: logging.Handler = (logging.FileHandler(log_file, encoding="utf-8")
                                if log_file is not None else logging.StreamHandler(sys.stderr))
    handler.setFormatter(RedactingFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    saved = []
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.level, log.propagate))
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False  # one copy of each record, through the redacting handler

    def undo() -> None:
        for log, level, propagate in saved:
            log.removeHandler(handler)
            log.setLevel(level)
            log.propagate = propagate
        handler.close()

    return undo
