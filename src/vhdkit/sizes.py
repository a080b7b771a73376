"""Sizes as users write them ('512M', '10GiB')."""

from __future__ import annotations

import re

from .errors import UsageError

#: The largest virtual size vhdkit writes: the fixed VHD (size + 512-byte footer) must fit in a
#: file offset (a signed 64-bit off_t); the footer's 64-bit field could say more.
MAX_SIZE = (1 << 63) - (1 << 20)

_SIZE_RE = re.compile(r"(\d+)\s*(?:([KMGT])(?:I?B)?)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from '1024', '512M', '512MiB', '10G', '10GiB', '1T' (binary units; 'MB' = MiB)."""
    m = _SIZE_RE.fullmatch(text.strip().replace("_", ""))
    if m is None:
        raise UsageError(f"invalid size {text!r}: use bytes or a number with K, M, G or T "
                         "(binary: 10G = 10 GiB)")
    unit = (m.group(2) or "").upper()
    if len(m.group(1)) > 40:  # int() of a huge digit string is itself slow; any such is too big
        raise UsageError(f"size {text.strip()!r} is too large: at most {MAX_SIZE} bytes")
    n = int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return check_size(n, text.strip())


def check_size(n: int, shown: object = None) -> int:
    """``n`` if it is a usable size in bytes (0 .. MAX_SIZE), else a one-line UsageError."""
    label = repr(shown) if shown is not None else str(n)
    if isinstance(n, bool) or not isinstance(n, int):
        raise UsageError(f"size {label} is not a whole number of bytes")
    if n < 0:
        raise UsageError(f"size {label} is negative")
    if n > MAX_SIZE:
        raise UsageError(f"size {label} is too large: at most {MAX_SIZE} bytes (8 EiB)")
    return n
