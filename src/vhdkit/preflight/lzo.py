"""LZO1X decompression (what Btrfs's ``lzo`` compression stores), with every bound checked.

No Python package for LZO is maintained with wheels; the format is small. The input is
untrusted: a literal or match that runs past the input, before the start of the output or past
``limit`` output bytes raises :class:`PreflightError` instead of reading or growing anything.
"""

from __future__ import annotations

from ..errors import PreflightError

M2_MAX_OFFSET = 0x0800


class _In:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise PreflightError("lzo: compressed data ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def le16(self) -> int:
        return self.byte() | (self.byte() << 8)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PreflightError("lzo: literal run past the end of the input")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def run(self, base: int) -> int:
        """A length extension: each zero byte adds 255, then the next byte and ``base``."""
        zeros = 0
        while self.byte() == 0:
            zeros += 1
            if zeros > len(self.data):
                raise PreflightError("lzo: length run is too long")
        return zeros * 255 + base + self.data[self.pos - 1]


def lzo1x_decompress(data: bytes, limit: int) -> bytes:
    """Decompress one LZO1X stream; more than ``limit`` output bytes is an error."""
    src = _In(data)
    out = bytearray()

    def literals(n: int) -> None:
        if len(out) + n > limit:
            raise PreflightError(f"lzo: output exceeds {limit} bytes")
        out.extend(src.take(n))

    def match(dist: int, n: int) -> None:
        start = len(out) - dist
        if start < 0:
            raise PreflightError("lzo: match reaches before the start of the output")
        if len(out) + n > limit:
            raise PreflightError(f"lzo: output exceeds {limit} bytes")
        for i in range(n):  # byte by byte: a match may overlap what it writes
            out.append(out[start + i])

    state = 0
    first = data[0] if data else 0
    if first > 17:
        src.pos = 1
        t = first - 17
        literals(t)
        state = t if t < 4 else 4
    while True:
        t = src.byte()
        if t < 16:
            if state == 0:  # a literal run
                n = src.run(15) if t == 0 else t
                literals(n + 3)
                state = 4
                continue
            if state != 4:  # a 2-byte match close behind
                nxt = t & 3
                match(1 + (t >> 2) + (src.byte() << 2), 2)
            else:  # a 3-byte match 2049..3072 behind
                nxt = t & 3
                match(1 + M2_MAX_OFFSET + (t >> 2) + (src.byte() << 2), 3)
        elif t >= 64:  # M2: 3..8 bytes up to 2 KiB behind
            nxt = t & 3
            dist = 1 + ((t >> 2) & 7) + (src.byte() << 3)
            match(dist, (t >> 5) + 1)
        elif t >= 32:  # M3: up to 16 KiB behind
            n = (t & 31) + 2
            if n == 2:
                n = src.run(31) + 2
            word = src.le16()
            nxt = word & 3
            match(1 + (word >> 2), n)
        else:  # M4: 16..48 KiB behind, or the end of the stream
            n = (t & 7) + 2
            if n == 2:
                n = src.run(7) + 2
            word = src.le16()
            nxt = word & 3
            dist = ((t & 8) << 11) + (word >> 2)
            if dist == 0:
                return bytes(out)
            match(dist + 0x4000, n)
        literals(nxt)
        state = nxt
