"""The VirtualDisk view: every container read as one flat virtual disk.

``open_disk(path)`` sniffs the container and returns a :class:`VirtualDisk` offering ``size``,
``read_at(offset, length)`` and ``extents()`` (ranges that may hold data; outside them the disk is
known to be zero). Reads of unallocated space return zeros without touching the file.
"""

from __future__ import annotations

import abc
from types import TracebackType

from .extents import Extent


class VirtualDisk(abc.ABC):
    """A read-only virtual disk. Subclasses implement ``_read`` and ``extents``."""

    #: short container name: raw, vhd-fixed, vhd-dynamic, vhd-differencing, vhdx
    kind: str = "raw"
    path: str = ""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Virtual size in bytes."""

    @abc.abstractmethod
    def extents(self) -> list[Extent]:
        """Sorted, merged ranges that may hold non-zero data."""

    @abc.abstractmethod
    def _read(self, offset: int, length: int) -> bytes:
        """Read a range already clipped to ``[0, size)``."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; past the end reads as short, never as an error."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be non-negative")
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        return self._read(offset, end - offset)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files held by the view."""

    def __enter__(self) -> VirtualDisk:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
