"""VHDX through libvhdi (pyvhdi); the allocation map comes from vhdx_bat.py."""

from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import FormatError
from ..extents import Extent
from .base import VirtualDisk
from .vhdx_bat import vhdx_extents, vhdx_extents_fd


class VhdxDisk(VirtualDisk):
    kind = "vhdx"

    def __init__(self, path: str, fd: int | None = None) -> None:
        """Open ``path``; with ``fd`` (owned from the call on) libvhdi reads that already checked
        descriptor instead of opening the path again."""
        import pyvhdi

        self.path = path
        self._file: Any = None if fd is None else os.fdopen(fd, "rb", buffering=0)
        self._f: Any = pyvhdi.file()
        # A pyvhdi file object is not safe for concurrent reads (upload verifies and plans
        # from several threads): one read at a time.
        self._lock = threading.Lock()
        self._extents: list[Extent] | None = None
        try:
            if self._file is None:
                self._f.open(path)
            else:
                self._f.open_file_object(self._file)
            self._size = int(self._f.get_media_size())
        except (OSError, IOError) as exc:  # noqa: UP024 - pyvhdi raises IOError subclasses
            self._close_file()
            raise FormatError("vhdx", 0, f"libvhdi cannot open the image: {exc}") from exc

    def facts(self) -> dict[str, Any]:
        kind = {2: "fixed", 3: "dynamic", 4: "differencing"}.get(int(self._f.get_disk_type()))
        return {"format": "vhdx", "subformat": kind}

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> list[Extent]:
        # libvhdi exposes no allocation map: read the BAT ourselves (once), or assume all of the
        # disk may hold data.
        if self._extents is None:
            found = (vhdx_extents(self.path) if self._file is None
                     else vhdx_extents_fd(self._file.fileno()))
            if found is None:
                found = [Extent(0, self._size)] if self._size else []
            self._extents = [Extent(e.start, min(e.end, self._size) - e.start)
                             for e in found if e.start < self._size]
        return list(self._extents)

    def _read(self, offset: int, length: int) -> bytes:
        try:
            with self._lock:
                data = bytes(self._f.read_buffer_at_offset(length, offset))
        except (OSError, IOError) as exc:  # noqa: UP024
            raise FormatError("vhdx", offset, f"libvhdi read failed: {exc}") from exc
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def close(self) -> None:
        self._f.close()
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
