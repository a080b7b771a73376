"""Streaming I/O for writers of sparse images: read a disk's extents in bounded chunks on a
read-ahead thread, find the non-zero sector runs, write them, and push written pages to disk
behind the writer. Used by ``convert``; nothing here knows about VHD."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator

from .extents import SECTOR, Extent, align_to_sectors, nonzero_runs, split, total
from .formats import VirtualDisk

MIB = 1024 * 1024
#: Bytes read per request. Large enough to amortise Python overhead, small enough for low RSS.
CHUNK = 8 * MIB


class SparseDigest:
    """SHA-256 of a disk's non-zero sectors with their offsets, independent of how the data was
    chunked: contiguous runs hash the same whether they arrive in one piece or many."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._end = -1

    def update(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self._end:
            self._h.update(b"@" + offset.to_bytes(8, "big"))
        self._h.update(data)
        self._end = offset + len(data)

    def hexdigest(self, size: int) -> str:
        h = self._h.copy()
        h.update(b"#" + size.to_bytes(8, "big"))
        return h.hexdigest()


#: Buffers read ahead by the reader thread while the caller scans and writes the current one.
PREFETCH = 2


#: A buffer of the ring: the scan searches it in place (a memoryview has no find()).
Buffer = mmap.mmap | bytearray


class _Chunks:
    """Reads ``extents`` in ``chunk``-sized pieces on a reader thread, into a ring of buffers.

    Iterating yields ``(piece, buf)``, the piece's data at the start of ``buf``; a buffer goes
    back to the ring only when ``release(buf)`` is called, so a later stage (a writer thread)
    may keep it until it is done with it. Memory stays at ``(prefetch + 1) * chunk``.
    """

    def __init__(self, disk: VirtualDisk, extents: list[Extent], chunk: int, prefetch: int):
        # No larger and no more buffers than the data needs, and anonymous maps rather than
        # bytearrays: a bytearray is zeroed when made (32 MiB of page faults, ~20 ms, before the
        # first byte is read, even for a 1 MiB disk); a map's pages appear as the reads fill them.
        need = total(extents)
        chunk = min(chunk, max(SECTOR, -(-need // SECTOR) * SECTOR))
        self.free: queue.Queue[Buffer] = queue.Queue()
        for _ in range(min(prefetch + 1, max(1, -(-need // chunk)))):
            self.free.put(mmap.mmap(-1, chunk))
        self.ready: queue.Queue[tuple[Extent, Buffer] | BaseException | None] = queue.Queue()
        self.stop = threading.Event()
        self.disk, self.extents, self.chunk = disk, extents, chunk
        self.thread = threading.Thread(target=self._read, name="vhdkit-read", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for piece in split(self.extents, self.chunk):
                buf = self.free.get()
                if self.stop.is_set():
                    return
                # zeros past the disk's end: sector padding of an odd-sized raw image
                self.disk.read_into(piece.start, memoryview(buf)[: piece.length])
                self.ready.put((piece, buf))
            self.ready.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            self.ready.put(exc)

    def __iter__(self) -> Iterator[tuple[Extent, Buffer]]:
        while (item := self.ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buf: Buffer) -> None:
        self.free.put(buf)

    def close(self) -> None:
        self.stop.set()
        self.free.put(bytearray(0))  # wake the reader if it waits for a buffer
        self.thread.join()


def scan(disk: VirtualDisk, extents: list[Extent], chunk: int = CHUNK,
         progress: Callable[[int], None] | None = None, prefetch: int = PREFETCH,
         ) -> Iterator[tuple[Extent, memoryview]]:
    """Yield ``(run, view)`` for every non-zero sector run of ``extents``, read ``chunk`` bytes at
    a time. ``view`` is a memoryview valid until the next item.

    A reader thread fills up to ``prefetch`` buffers ahead (reads release the GIL, so reading
    overlaps the caller's scanning and writing); memory stays at ``(prefetch + 1) * chunk``.
    """
    if prefetch <= 0:
        whole = bytearray(chunk)
        for piece in split(extents, chunk):
            yield from _runs(disk, piece, whole, progress, read=True)
        return
    chunks = _Chunks(disk, extents, chunk, prefetch)
    try:
        for piece, buf in chunks:
            yield from _runs(disk, piece, buf, progress, read=False)
            chunks.release(buf)
    finally:
        chunks.close()


def copy_nonzero(disk: VirtualDisk, extents: list[Extent], fd: int, chunk: int = CHUNK,
                 progress: Callable[[int], None] | None = None,
                 on_run: Callable[[Extent, memoryview], None] | None = None,
                 prefetch: int = PREFETCH + 1) -> int:
    """Write every non-zero sector run of ``extents`` to ``fd`` at the same offset; returns the
    bytes written. ``on_run`` sees each run after it was written, in ascending order (digests,
    flush-behind).

    Three stages overlap, each on its own thread: reading, scanning (the caller's thread) and
    writing. pread, numpy and pwrite all release the GIL, so the copy runs at the speed of the
    slowest stage instead of the sum of the three.
    """
    chunks = _Chunks(disk, extents, chunk, prefetch)
    jobs: queue.Queue[tuple[Buffer, Extent, list[Extent]] | None] = queue.Queue()
    failed: list[BaseException] = []
    written = 0

    def writer() -> None:
        nonlocal written
        while (job := jobs.get()) is not None:
            buf, piece, runs = job
            try:
                if not failed:
                    view = memoryview(buf)
                    for run in runs:
                        data = view[run.start - piece.start : run.end - piece.start]
                        pwrite_all(fd, data, run.start)
                        written += run.length
                        if on_run is not None:
                            on_run(run, data)
            except BaseException as exc:  # raised in the caller's thread below
                failed.append(exc)
            chunks.release(buf)

    thread = threading.Thread(target=writer, name="vhdkit-write", daemon=True)
    thread.start()
    try:
        for piece, buf in chunks:
            if failed:
                break
            jobs.put((buf, piece, nonzero_runs(buf, piece.start, piece.length)))
            if progress is not None:
                progress(piece.length)
    finally:
        jobs.put(None)
        thread.join()
        chunks.close()
    if failed:
        raise failed[0]
    return written


def _runs(disk: VirtualDisk, piece: Extent, buf: Buffer,
          progress: Callable[[int], None] | None, read: bool,
          ) -> Iterator[tuple[Extent, memoryview]]:
    mv = memoryview(buf)[: piece.length]
    if read:
        disk.read_into(piece.start, mv)
    for run in nonzero_runs(buf, piece.start, piece.length):
        yield run, mv[run.start - piece.start : run.end - piece.start]
    if progress is not None:
        progress(piece.length)


#: Start writeback after this many bytes were written (0: only the final fsync writes back).
FLUSH_BEHIND = 32 * MIB


class Flusher:
    """Writes dirty pages back behind the writer, on a helper thread, so that disk I/O overlaps
    reading and the final fsync has little left to wait for. On Linux POSIX_FADV_DONTNEED starts
    writeback of the range (and drops its clean pages: the output is not read again)."""

    def __init__(self, fd: int, step: int = FLUSH_BEHIND) -> None:
        self.fd, self.step = fd, step
        self.done = self.high = 0
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        if step > 0 and hasattr(os, "posix_fadvise"):
            self.thread = threading.Thread(target=self._run, name="vhdkit-flush", daemon=True)
            self.thread.start()

    def wrote(self, end: int) -> None:
        """Data up to offset ``end`` has been written (writes come in ascending order)."""
        self.high = max(self.high, end)
        if self.thread is not None and self.high - self.done >= self.step:
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            lo, hi = self.done, self.high
            if hi > lo:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(self.fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
                self.done = hi
            if self.stopping:
                return

    def stop(self) -> None:
        if self.thread is not None:
            self.stopping = True
            self.wake.set()
            self.thread.join()


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def data_digest(disk: VirtualDisk, chunk: int = CHUNK,
                progress: Callable[[int], None] | None = None, size: int | None = None) -> str:
    """The :class:`SparseDigest` of a disk's virtual data, as a disk of ``size`` bytes (default:
    its own size; zeros beyond it)."""
    d = SparseDigest()
    for run, data in scan(disk, align_to_sectors(disk.extents(), -(-disk.size // MIB) * MIB),
                          chunk, progress):
        d.update(run.start, data)
    return d.hexdigest(disk.size if size is None else size)
