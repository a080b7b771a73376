"""Raw images (and the data area of a fixed VHD): the file is the disk."""

from __future__ import annotations

import errno
import os

from ..extents import SECTOR, Extent, merge
from .base import VirtualDisk, pread_into, zero_fill


def data_extents(fd: int, limit: int) -> list[Extent]:
    """Data ranges of ``[0, limit)`` by SEEK_DATA/SEEK_HOLE (all of it if unsupported)."""
    out: list[Extent] = []
    pos = 0
    try:
        while pos < limit:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            if start >= limit:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), limit)
            # Holes are reported in filesystem blocks; align outward to sectors.
            s = start // SECTOR * SECTOR
            out.append(Extent(s, min(limit, -(-end // SECTOR) * SECTOR) - s))
            pos = end
    except (OSError, AttributeError):
        return [Extent(0, limit)] if limit else []
    return merge(out)


class RawDisk(VirtualDisk):
    """A raw image, or the data area of a fixed VHD (``data_len`` bytes of file, then zeros)."""

    kind = "raw"

    def __init__(self, path: str, fd: int, size: int, data_len: int | None = None) -> None:
        self.path = path
        self._fd = fd
        self._size = size
        self._data_len = size if data_len is None else min(size, data_len)

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> list[Extent]:
        return data_extents(self._fd, self._data_len)

    def _read(self, offset: int, length: int) -> bytes:
        n = max(0, min(length, self._data_len - offset))
        data = os.pread(self._fd, n, offset) if n else b""
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def read_into(self, offset: int, buf: memoryview) -> None:
        n = max(0, min(len(buf), self._data_len - offset))
        if n:
            pread_into(self._fd, buf[:n], offset)
        zero_fill(buf[n:])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
