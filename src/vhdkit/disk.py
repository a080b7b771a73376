"""The VirtualDisk view: every container read as one flat virtual disk.

``open_disk(path)`` sniffs the container and returns a :class:`VirtualDisk` offering ``size``,
``read_at(offset, length)`` and ``extents()`` (ranges that may hold data; outside them the disk is
known to be zero). Reads of unallocated space return zeros without touching the file.
"""

from __future__ import annotations

import abc
import errno
import os
import stat
import threading
from collections import OrderedDict
from types import TracebackType
from typing import Any

import numpy as np

from .errors import DiskIOError, FormatError, ParentNotFound, UnsupportedDisk
from .extents import SECTOR, Extent, merge
from .vhd.image import VhdImage, looks_like_footer, open_vhd, read_tail_footer
from .vhd.structs import (
    BAT_UNUSED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    VHDX_SIGNATURE,
    DiskType,
    Footer,
)
from .vhd.vhdx import vhdx_extents


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

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` (zeros past the end).

        For streaming callers (convert, upload) that reuse one buffer: readers that override it
        read straight into ``buf``, without allocating and copying per request.
        """
        data = self.read_at(offset, len(buf))
        buf[: len(data)] = data
        _zero(buf[len(data) :])

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


def _zero(buf: memoryview) -> None:
    if len(buf):
        np.frombuffer(buf, dtype=np.uint8).fill(0)


_HAVE_PREADV = hasattr(os, "preadv")


def _pread_into(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from the file at ``offset``; bytes past the end of the file read as zeros."""
    done = 0
    while done < len(buf):
        if _HAVE_PREADV:
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:  # e.g. older macOS: one extra copy
            data = os.pread(fd, len(buf) - done, offset + done)
            n = len(data)
            buf[done : done + n] = data
        if n <= 0:
            _zero(buf[done:])
            return
        done += n


MAX_PARENT_DEPTH = 32
_BITMAP_CACHE = 256


def _data_extents(fd: int, limit: int) -> list[Extent]:
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
        return _data_extents(self._fd, self._data_len)

    def _read(self, offset: int, length: int) -> bytes:
        n = max(0, min(length, self._data_len - offset))
        data = os.pread(self._fd, n, offset) if n else b""
        if len(data) < length:
            data += bytes(length - len(data))
        return data

    def read_into(self, offset: int, buf: memoryview) -> None:
        n = max(0, min(len(buf), self._data_len - offset))
        if n:
            _pread_into(self._fd, buf[:n], offset)
        _zero(buf[n:])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FixedVhdDisk(RawDisk):
    kind = "vhd-fixed"

    def __init__(self, image: VhdImage) -> None:
        super().__init__(image.path, image.fd, image.size, image.data_end)
        self.image = image

    def close(self) -> None:
        self.image.close()
        self._fd = -1


class DynamicVhdDisk(VirtualDisk):
    """Dynamic and differencing VHDs. A differencing disk reads absent sectors from its parent."""

    def __init__(self, image: VhdImage, parent: VirtualDisk | None = None) -> None:
        assert image.header is not None and image.bat is not None
        self.image = image
        self.path = image.path
        self.parent = parent
        diff = image.disk_type == DiskType.DIFFERENCING
        self.kind = "vhd-differencing" if diff else "vhd-dynamic"
        self._bs = image.header.block_size
        self._spb = self._bs // SECTOR
        self._bat = image.bat
        self._bitmap_size = image.bitmap_size
        self._runs: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
        self._runs_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def block_size(self) -> int:
        return self._bs

    def _present(self, block: int) -> list[tuple[int, int]]:
        """Sector runs ``(first, end)`` of a block marked present in its bitmap; [] if unallocated.

        Bit order is most-significant first (sector 0 is bit 7 of byte 0). Cached per block.
        """
        if block >= len(self._bat) or self._bat[block] == BAT_UNUSED:
            return []
        with self._runs_lock:  # readers on several threads share the cache
            cached = self._runs.get(block)
            if cached is not None:
                self._runs.move_to_end(block)
                return cached
        raw = os.pread(self.image.fd, self._bitmap_size, int(self._bat[block]) * SECTOR)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: self._spb]
        if bits.all():
            runs = [(0, self._spb)]
        else:
            edges = np.flatnonzero(np.diff(bits.view(np.int8), prepend=0, append=0))
            runs = list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
        with self._runs_lock:
            self._runs[block] = runs
            if len(self._runs) > _BITMAP_CACHE:
                self._runs.popitem(last=False)
        return runs

    def allocated_blocks(self) -> int:
        return int(np.count_nonzero(self._bat != BAT_UNUSED))

    def extents(self) -> list[Extent]:
        out: list[Extent] = []
        for block in np.flatnonzero(self._bat != BAT_UNUSED).tolist():
            base = block * self._bs
            out.extend(Extent(base + s * SECTOR, (e - s) * SECTOR) for s, e in self._present(block))
        if self.parent is not None:
            out.extend(self.parent.extents())
        size = self.size
        return [Extent(e.start, min(e.end, size) - e.start) for e in merge(out) if e.start < size]

    def _read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return bytes(out)

    def read_into(self, offset: int, buf: memoryview) -> None:
        length = len(buf)
        limit = max(0, min(length, self.size - offset))
        _zero(buf[limit:])
        end = offset + limit
        pos = offset
        while pos < end:
            block = pos // self._bs
            bstart = block * self._bs
            hi = min(end, bstart + self._bs)
            cursor = pos  # next byte not yet filled from the child
            for s, e in self._present(block):
                rs, re = max(pos, bstart + s * SECTOR), min(hi, bstart + e * SECTOR)
                if rs >= re:
                    continue
                if cursor < rs:
                    self._fill_parent(buf, offset, cursor, rs)
                src = int(self._bat[block]) * SECTOR + self._bitmap_size + (rs - bstart)
                _pread_into(self.image.fd, buf[rs - offset : re - offset], src)
                cursor = re
            if cursor < hi:
                self._fill_parent(buf, offset, cursor, hi)
            pos = hi

    def _fill_parent(self, buf: memoryview, base: int, start: int, end: int) -> None:
        part = buf[start - base : end - base]
        if self.parent is None:
            _zero(part)  # absent sectors of a dynamic disk read as zeros
        else:
            self.parent.read_into(start, part)

    def close(self) -> None:
        self.image.close()
        if self.parent is not None:
            self.parent.close()


class VhdxDisk(VirtualDisk):
    """VHDX through libvhdi (pyvhdi); the allocation map comes from vhd/vhdx.py."""

    kind = "vhdx"

    def __init__(self, path: str) -> None:
        import pyvhdi

        self.path = path
        self._f: Any = pyvhdi.file()
        # A pyvhdi file object is not safe for concurrent reads (upload verifies and plans
        # from several threads): one read at a time.
        self._lock = threading.Lock()
        self._extents: list[Extent] | None = None
        try:
            self._f.open(path)
            self._size = int(self._f.get_media_size())
        except (OSError, IOError) as exc:  # noqa: UP024 - pyvhdi raises IOError subclasses
            raise FormatError("vhdx", 0, f"libvhdi cannot open the image: {exc}") from exc

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> list[Extent]:
        # libvhdi exposes no allocation map: read the BAT ourselves (once), or assume all of the
        # disk may hold data.
        if self._extents is None:
            found = vhdx_extents(self.path)
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


def _open_fd(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DiskIOError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise DiskIOError(f"{path}: permission denied") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DiskIOError(f"{path}: is a directory, not a disk image")
    try:
        fd = os.open(path, os.O_RDONLY)
    except PermissionError as exc:
        raise DiskIOError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise DiskIOError(f"{path}: {exc.strerror}") from exc
    size = os.fstat(fd).st_size
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
    return fd, size


def detect_format(path: str) -> str:
    """'vhd', 'vhdx' or 'raw', from the content (and the suffix for a damaged VHD footer)."""
    fd, size = _open_fd(path)
    try:
        return _detect(fd, size, path)
    finally:
        os.close(fd)


def _detect(fd: int, size: int, path: str) -> str:
    if size >= 8 and os.pread(fd, 8, 0) == VHDX_SIGNATURE:
        return "vhdx"
    tail = read_tail_footer(fd, size)
    if tail is not None:
        raw = tail[0]
        if raw[:8] == FOOTER_COOKIE or looks_like_footer(raw):
            return "vhd"
    if size >= 1024 and os.pread(fd, 8, 0) == FOOTER_COOKIE:
        return "vhd"  # dynamic disk whose tail footer is gone: the head copy remains
    if path.lower().endswith(".vhd"):
        if size == 0:
            raise FormatError("file", 0, "empty file (0 bytes)")
        off = max(0, size - FOOTER_SIZE)
        found = os.pread(fd, 8, off)
        raise FormatError("footer.cookie", off, f"expected b'conectix', found {found!r}")
    return "raw"


def open_disk(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    strict: bool = True,
) -> VirtualDisk:
    """Open any supported disk image as a :class:`VirtualDisk`.

    ``format`` forces 'raw', 'vhd' or 'vhdx' instead of sniffing. ``parent`` names the parent
    of a differencing disk explicitly; otherwise it is found through the parent locators,
    relative to the child. ``strict=False`` records recoverable defects on ``disk.image.anomalies``
    instead of raising (used by ``check``).
    """
    return _open(os.fspath(path), None if parent is None else os.fspath(parent), format, strict, 0)


def _open(path: str, parent: str | None, fmt: str | None, strict: bool, depth: int) -> VirtualDisk:
    if depth > MAX_PARENT_DEPTH:
        raise ParentNotFound(f"{path}: parent chain deeper than {MAX_PARENT_DEPTH} (a loop?)")
    fd, size = _open_fd(path)
    try:
        kind = fmt or _detect(fd, size, path)
        if kind == "raw":
            if size == 0:
                raise FormatError("file", 0, "empty file (0 bytes)")
            return RawDisk(path, fd, size)
        if kind == "vhdx":
            os.close(fd)
            fd = -1
            return VhdxDisk(path)
        if kind != "vhd":
            raise UnsupportedDisk(f"unknown format {kind!r}")
        image = open_vhd(path, fd, size, strict=strict)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    if image.disk_type == DiskType.FIXED:
        return FixedVhdDisk(image)
    try:
        par = None
        if image.disk_type == DiskType.DIFFERENCING:
            par = _open_parent(image, parent, strict, depth)
        return DynamicVhdDisk(image, par)
    except BaseException:
        image.close()
        raise


def parent_candidates(image: VhdImage) -> list[str]:
    """Where the parent may be: locators (relative first), then its name beside the child."""
    assert image.header is not None
    here = os.path.dirname(os.path.abspath(image.path))
    out: list[str] = []
    order = {"W2ru": 0, "Wi2r": 1, "W2ku": 2, "Wi2k": 3, "MacX": 4, "Mac ": 5}
    for loc in sorted(image.locators, key=lambda x: order.get(x.platform_code, 9)):
        text = loc.path.replace("\\", "/")
        if loc.platform_code in ("W2ru", "Wi2r"):
            out.append(os.path.normpath(os.path.join(here, text)))
        elif text.startswith("/"):
            out.append(text)
        # An absolute Windows path ("C:/disks/parent.vhd") rarely exists here; try its name.
        out.append(os.path.join(here, os.path.basename(text)))
    name = image.header.parent_name_text.replace("\\", "/")
    if name:
        out.append(os.path.join(here, os.path.basename(name)))
    return list(dict.fromkeys(out))


def _open_parent(image: VhdImage, parent: str | None, strict: bool, depth: int) -> VirtualDisk:
    assert image.header is not None
    tried = [parent] if parent else parent_candidates(image)
    found = next((p for p in tried if os.path.isfile(p)), None)
    if found is None:
        shown = ", ".join(tried) or "no parent locators"
        raise ParentNotFound(f"{image.path}: parent disk not found (tried {shown}); "
                             "give it with --parent PATH")
    disk = _open(found, None, None, strict, depth + 1)
    want = image.header.parent_unique_id
    got = _unique_id(disk)
    if got is not None and got != want:
        disk.close()
        raise ParentNotFound(f"{image.path}: parent {found} has unique id {got.hex()}, "
                             f"the child expects {want.hex()}")
    return disk


def _unique_id(disk: VirtualDisk) -> bytes | None:
    image = getattr(disk, "image", None)
    if isinstance(image, VhdImage):
        return image.footer.unique_id
    return None


def vhd_footer(disk: VirtualDisk) -> Footer | None:
    """The footer of a VHD-backed disk, else None."""
    image = getattr(disk, "image", None)
    return image.footer if isinstance(image, VhdImage) else None
