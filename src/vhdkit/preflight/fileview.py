"""A read-only file object over a byte range of a VirtualDisk (no copies).

libyal readers (``pyfsext.open_file_object`` and friends) need ``read``, ``seek``, ``tell`` and
``get_size``; partitions and LVM physical volumes are handed to them as such views.
"""

from __future__ import annotations

import io

from ..formats import VirtualDisk


class FileView:
    """The bytes ``[offset, offset + length)`` of ``disk`` as a seekable binary file."""

    def __init__(self, disk: VirtualDisk, offset: int = 0, length: int | None = None) -> None:
        if offset < 0:
            raise ValueError("offset must be non-negative")
        available = max(0, disk.size - offset)
        self.disk = disk
        self.offset = offset
        # A partition that claims to run past the disk end is clipped, not trusted.
        self.length = available if length is None else max(0, min(length, available))
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        if self._pos >= self.length:
            return b""
        remaining = self.length - self._pos
        n = remaining if size is None or size < 0 else min(size, remaining)
        data = self.disk.read_at(self.offset + self._pos, n)
        self._pos += len(data)
        return data

    def read_at(self, offset: int, length: int) -> bytes:
        """Read without moving the file position (clipped to the view)."""
        if offset < 0 or offset >= self.length or length <= 0:
            return b""
        return self.disk.read_at(self.offset + offset, min(length, self.length - offset))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError("seek before the start of the view")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def get_size(self) -> int:
        return self.length

    def sub(self, offset: int, length: int | None = None) -> FileView:
        """A view of a range inside this view (nested partitions, LVM data areas)."""
        inner = self.length - offset if length is None else length
        return FileView(self.disk, self.offset + offset, max(0, min(inner, self.length - offset)))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to release: the disk belongs to the caller."""
