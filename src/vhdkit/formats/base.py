"""The VirtualDisk protocol every container reader implements, and the file helpers they share."""

from __future__ import annotations

import abc
import os
import stat
from types import TracebackType
from typing import Any

from ..errors import DiskIOError
from ..extents import ZEROS, Extent


class VirtualDisk(abc.ABC):
    """A read-only virtual disk. Subclasses implement ``_read`` and ``extents``."""

    #: short container name: raw, vhd-fixed, vhd-dynamic, vhd-differencing, vhdx, qcow2, ...
    kind: str = "raw"
    path: str = ""

    def facts(self) -> dict[str, Any]:
        """Format-specific facts for ``inspect`` (JSON-safe): at least ``format`` and, where the
        container has one, ``subformat``; readers add what users need to know (cluster size,
        backing file, snapshots, dirty/corrupt flags, ...)."""
        return {"format": self.kind, "subformat": None}

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
        zero_fill(buf[len(data) :])

    def chain(self) -> list[VirtualDisk]:
        """This disk and the disks it reads from (parents, backing files), child first."""
        return [self]

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


class ReadsInto(VirtualDisk):
    """A reader whose primitive is :meth:`read_into` (straight into the caller's buffer, as
    streaming wants); ``read_at`` goes through it too."""

    @abc.abstractmethod
    def read_into(self, offset: int, buf: memoryview) -> None: ...

    def _read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return bytes(out)


_ZEROS = memoryview(ZEROS)


def zero_fill(buf: memoryview) -> None:
    """Zeros into ``buf``, a memcpy per MiB; no numpy to load."""
    if buf.format != "B":
        buf = buf.cast("B")
    for pos in range(0, len(buf), len(_ZEROS)):
        part = buf[pos:pos + len(_ZEROS)]
        part[:] = _ZEROS[:len(part)]


HAVE_PREADV = hasattr(os, "preadv")


def pread_into(fd: int, buf: memoryview, offset: int) -> None:
    """Fill ``buf`` from the file at ``offset``; bytes past the end of the file read as zeros."""
    done = 0
    while done < len(buf):
        if HAVE_PREADV:
            n = os.preadv(fd, [buf[done:]], offset + done)
        else:  # e.g. older macOS: one extra copy
            data = os.pread(fd, len(buf) - done, offset + done)
            n = len(data)
            buf[done : done + n] = data
        if n <= 0:
            zero_fill(buf[done:])
            return
        done += n


def open_fd(path: str) -> tuple[int, int]:
    """Open a disk image read-only; returns (fd, size in bytes).

    Only regular files and block devices are disks. The file is opened with O_NONBLOCK so that a
    FIFO or a device that blocks on open cannot hang vhdkit, and checked with fstat afterwards
    (no window between the check and the open). Block devices are sized by seeking to the end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        raise DiskIOError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise DiskIOError(f"{path}: permission denied") from exc
    except IsADirectoryError as exc:
        raise DiskIOError(f"{path}: is a directory, not a disk image") from exc
    except OSError as exc:
        raise DiskIOError(f"{path}: {exc.strerror}") from exc
    try:
        size = fd_size(fd, os.fstat(fd).st_mode, path)
        if hasattr(os, "O_NONBLOCK"):  # reads of a regular file or a disk never block anyway
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def fd_size(fd: int, mode: int, path: str) -> int:
    """The size of an open disk: ``st_size`` for a regular file, the end offset for a block
    device (whose ``st_size`` is 0). The one sizing path of every command; refuses anything
    else (FIFO, character device, socket, directory)."""
    if stat.S_ISREG(mode):
        return os.fstat(fd).st_size
    if stat.S_ISBLK(mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if stat.S_ISDIR(mode):
        raise DiskIOError(f"{path}: is a directory, not a disk image")
    raise DiskIOError(f"{path}: is a {file_kind(mode)}, not a disk image "
                      "(only regular files and block devices are read)")


def file_size(path: str) -> int:
    """Size in bytes of the disk file at ``path``, through the same checks as ``open_fd``."""
    fd, size = open_fd(path)
    os.close(fd)
    return size


def file_kind(mode: int) -> str:
    """A word for what a non-regular file is, for messages."""
    for test, word in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return word
    return "special file"
