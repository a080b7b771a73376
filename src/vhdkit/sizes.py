"""Sizes as users write them ('512M', '10GiB')."""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE_RE = re.compile(r"(\d+)\s*(?:([KMGT])(?:I?B)?)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '1024', '512M', '512MiB', '10G', '10GiB', '1T' (binary units; 'MB' = MiB)."""
    m = _SIZE_RE.fullmatch(text.strip().replace("_", ""))
    if m is None:
        raise UsageError(f"invalid size {text!r}: use bytes or a number with K, M, G or T "
                         "(binary: 10G = 10 GiB)")
    unit = (m.group(2) or "").upper()
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
