"""The three-stage copy (read, scan, write threads) used by convert."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vhdkit.extents import Extent
from vhdkit.formats import VirtualDisk
from vhdkit.sparse_io import copy_nonzero


class BytesDisk(VirtualDisk):
    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self.data, self.fail_at = data, fail_at

    @property
    def size(self) -> int:
        return len(self.data)

    def extents(self) -> list[Extent]:
        return [Extent(0, len(self.data))]

    def _read(self, offset: int, length: int) -> bytes:
        if self.fail_at is not None and offset <= self.fail_at < offset + length:
            raise OSError(5, "injected read error")
        return self.data[offset : offset + length]


def pattern(size: int) -> bytes:
    buf = bytearray(size)
    for i, off in enumerate(range(0, size, 3 * 4096 + 512)):
        buf[off : off + 1024] = bytes([i % 255 + 1]) * 1024
    return bytes(buf)


@pytest.mark.parametrize("chunk", [4096, 64 * 1024, 1 << 20])
def test_copies_exactly_the_nonzero_sectors(tmp_path: Path, chunk: int) -> None:
    data = pattern(3 << 20)
    out = tmp_path / "out"
    seen: list[Extent] = []
    fd = os.open(out, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, len(data))
        n = copy_nonzero(BytesDisk(data), [Extent(0, len(data))], fd, chunk,
                         on_run=lambda run, view: seen.append(run))
    finally:
        os.close(fd)
    assert out.read_bytes() == data
    nonzero = sum(1 for i in range(0, len(data), 512) if any(data[i : i + 512]))
    assert n == nonzero * 512 == sum(r.length for r in seen)
    assert [r.start for r in seen] == sorted(r.start for r in seen)  # ascending, for digests


def test_a_write_error_is_raised_not_swallowed(tmp_path: Path) -> None:
    data = pattern(2 << 20)
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            copy_nonzero(BytesDisk(data), [Extent(0, len(data))], fd, 64 * 1024)
    finally:
        os.close(fd)


def test_a_read_error_is_raised_and_no_thread_hangs(tmp_path: Path) -> None:
    data = pattern(2 << 20)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="injected"):
            copy_nonzero(BytesDisk(data, fail_at=1 << 20), [Extent(0, len(data))], fd, 64 * 1024)
    finally:
        os.close(fd)


def test_read_buffers_are_sized_by_the_data() -> None:
    """A 1 MiB disk gets one 1 MiB buffer, not the ring of 8 MiB chunks a large disk gets
    (zeroing those cost ~20 ms before the first read)."""
    from vhdkit.sparse_io import _Chunks

    small = _Chunks(BytesDisk(bytes(1 << 20)), [Extent(0, 1 << 20)], 8 << 20, 3)
    try:
        assert small.chunk == 1 << 20
        assert [len(buf) for _, buf in small] == [1 << 20]
    finally:
        small.close()
