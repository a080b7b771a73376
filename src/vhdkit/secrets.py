"""Keep secrets out of text: SAS signatures, account keys, connection-string keys."""

from __future__ import annotations

import re

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
