"""Keep secrets out of text: SAS signatures, account keys, connection-string keys."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

_PATTERNS = [
    # SAS query parameter: sig=... (URL-encoded base64)
    (re.compile(r"(?i)([?&]sig=)[^&\s'\"]+"), r"\1REDACTED"),
    # connection-string parts
    (re.compile(r"(?i)(AccountKey=)[^;\s'\"]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s'\"]+"), r"\1REDACTED"),
    # Authorization headers
    (re.compile(r"(?i)(SharedKey [^:\s]+:)[^\s'\"]+"), r"\1REDACTED"),
    (re.compile(r"(?i)(Bearer )[^\s'\"]+"), r"\1REDACTED"),
]


def redact(text: str, extra: list[str] | None = None) -> str:
    """Return ``text`` with known secret shapes (and any ``extra`` literal secrets) removed."""
    for secret in extra or []:
        if secret:
            text = text.replace(secret, "REDACTED")
    for pat, rep in _PATTERNS:
        text = pat.sub(rep, text)
    return text


#: Loggers whose records may carry request URLs (with a SAS) or headers.
LOGGERS = ("azure", "urllib3", "requests", "msal", "vhdkit")
_literal: set[str] = set()
_installed = False


def register(secrets: list[str]) -> None:
    """Literal secrets (an account key, a SAS query) to remove from log records too."""
    _literal.update(s for s in secrets if s)


def install_log_redaction() -> None:
    """Redact every log record of the SDK, urllib3 and vhdkit loggers when it is created, at any
    level and whatever handler a program installs: the message is formatted, cleaned and
    stored without its arguments, and an attached exception is formatted and cleaned too."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.split(".", 1)[0] in LOGGERS:
            _clean(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _clean(record: logging.LogRecord) -> None:
    try:
        text = record.getMessage()
    except Exception:  # a malformed record: keep only its format string
        text = str(record.msg)
    extra = sorted(_literal, key=len, reverse=True)
    record.msg, record.args = redact(text, extra), None
    if record.exc_info:
        formatted = "".join(traceback.format_exception(*record.exc_info))
        record.exc_info, record.exc_text = None, redact(formatted, extra).rstrip("\n")
    if record.stack_info:
        record.stack_info = redact(record.stack_info, extra)
