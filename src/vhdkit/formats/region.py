"""A byte window of an open file: how container readers reach their data.

A VMDK inside an OVA is a tar member, a contiguous range of the archive: readers that take a
``Region`` read it in place, without extracting it. Every read is clipped to the window, so a
field inside the disk can never make a reader see bytes outside it.
"""

from __future__ import annotations

import errno
import os

from ..errors import FormatError
from ..extents import SECTOR, Extent, merge
from .base import pread_into, zero_fill


class Region:
    """``length`` bytes of ``fd`` from ``base`` on. Does not own ``fd``."""

    def __init__(self, fd: int, base: int, length: int, name: str) -> None:
        self.fd = fd
        self.base = base
        self.length = length
        #: the file (or archive member) shown in messages
        self.name = name

    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``, short at the end of the window."""
        n = max(0, min(n, self.length - offset))
        if n == 0 or offset < 0:
            return b""
        return os.pread(self.fd, n, self.base + offset)

    def read_exact(self, offset: int, n: int, field: str, field_offset: int | None = None
                   ) -> bytes:
        """Exactly ``n`` bytes at ``offset``; a range past the end is a FormatError on ``field``."""
        if offset < 0 or n < 0 or offset + n > self.length:
            raise FormatError(field, offset if field_offset is None else field_offset,
                              f"needs bytes {offset}..{offset + n} but {self.name} has "
                              f"{self.length} bytes")
        data = self.pread(offset, n)
        if len(data) != n:
            raise FormatError(field, offset, f"{self.name} ended while reading {n} bytes")
        return data

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``; bytes past the window read as zeros."""
        n = max(0, min(len(buf), self.length - offset))
        if n:
            pread_into(self.fd, buf[:n], self.base + offset)
        zero_fill(buf[n:])

    def data_ranges(self, offset: int, length: int) -> list[Extent]:
        """Ranges of ``[offset, offset + length)`` (window-relative) that may hold data, by
        SEEK_DATA/SEEK_HOLE (all of it when the file system cannot tell)."""
        end = min(offset + length, self.length)
        out: list[Extent] = []
        pos = offset
        try:
            while pos < end:
                try:
                    start = os.lseek(self.fd, self.base + pos, os.SEEK_DATA) - self.base
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break
                    raise
                if start >= end:
                    break
                stop = min(os.lseek(self.fd, self.base + start, os.SEEK_HOLE) - self.base, end)
                s = max(offset, start // SECTOR * SECTOR)
                out.append(Extent(s, min(end, -(-stop // SECTOR) * SECTOR) - s))
                pos = stop
        except (OSError, AttributeError):
            return [Extent(offset, end - offset)] if end > offset else []
        return merge(out)
