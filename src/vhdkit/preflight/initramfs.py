"""List the file names inside an initramfs without unpacking it.

An initramfs is one or more cpio "newc" archives back to back, each possibly compressed (gzip, xz,
lzma, bzip2, zstd, lz4 legacy); distributions put an uncompressed early-microcode archive first.
Archives are streamed: only names are kept, file data is skipped, memory stays bounded.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator

from ..errors import PreflightError
from .volumes import BinaryFile

CHUNK = 1 << 20
MAX_NAME = 4096
MAX_DECOMPRESSED = 2 << 30  # stop inflating beyond this: a bomb, not an initramfs
LZ4_LEGACY = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20


def _raw_chunks(f: BinaryFile, start: int) -> Iterator[bytes]:
    f.seek(start)
    while True:
        data = f.read(CHUNK)
        if not data:
            return
        yield data


class _Stream:
    """A byte reader over an iterator of chunks, with a position count."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self.pos = 0

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            nxt = next(self._chunks, None)
            if nxt is None:
                break
            self._buf += nxt
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.pos += len(out)
        if self.pos > MAX_DECOMPRESSED:
            raise PreflightError("initramfs: decompressed size exceeds 2 GiB")
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, CHUNK)))
            if got == 0:
                return
            n -= got


def list_initramfs(f: BinaryFile, until: Callable[[str], bool] | None = None) -> list[str]:
    """Every path in every archive of the initramfs (leading "./" and "/" removed).

    ``until(name)`` is called for each name and may stop the scan early by returning True (a
    real initramfs is tens of MiB compressed; the caller stops once it saw what it needs).
    """
    names: list[str] = []
    stop = _Stop(until)
    size = f.get_size()
    offset = 0
    while offset < size:
        f.seek(offset)
        magic = f.read(6)
        if magic[:6] in (b"070701", b"070702"):
            # Uncompressed archive (early microcode): parse in place, continue after it.
            stream = _Stream(_raw_chunks(f, offset))
            names += _cpio_names(stream, stop)
            if stop.done:
                return names
            offset += _align(stream.pos, 4)
            offset = _skip_zeros(f, offset, size)
            continue
        if magic[:4] == b"\0\0\0\0":
            offset = _skip_zeros(f, offset, size)
            continue
        # A compressed archive runs to the end of the file (kernels accept nothing after it).
        names += _cpio_names(_Stream(_decompress(magic, _raw_chunks(f, offset))), stop)
        break
    return names


def _skip_zeros(f: BinaryFile, offset: int, size: int) -> int:
    while offset < size:
        f.seek(offset)
        block = f.read(min(CHUNK, size - offset))
        stripped = block.lstrip(b"\0")
        if stripped:
            return offset + len(block) - len(stripped)
        offset += len(block)
    return offset


class _Stop:
    def __init__(self, until: Callable[[str], bool] | None) -> None:
        self.until = until
        self.done = False

    def see(self, name: str) -> None:
        if self.until is not None and self.until(name):
            self.done = True


def _cpio_names(s: _Stream, stop: _Stop) -> list[str]:
    names: list[str] = []
    while not stop.done:
        hdr = s.read(110)
        if len(hdr) < 110:
            return names
        if hdr[:6] not in (b"070701", b"070702"):
            raise PreflightError(f"initramfs: bad cpio header magic {hdr[:6]!r}")
        try:
            fsize = int(hdr[54:62], 16)
            namesize = int(hdr[94:102], 16)
        except ValueError as exc:
            raise PreflightError("initramfs: cpio header is not hexadecimal") from exc
        if not 0 < namesize <= MAX_NAME:
            raise PreflightError(f"initramfs: cpio name size {namesize} out of range")
        name = s.read(namesize).rstrip(b"\0").decode("utf-8", "replace")
        s.skip(_align(110 + namesize, 4) - 110 - namesize)
        if name == "TRAILER!!!":
            return names
        names.append(name[2:] if name.startswith("./") else name.lstrip("/"))
        stop.see(names[-1])
        if stop.done:
            break
        s.skip(_align(fsize, 4))
    return names


def _decompress(magic: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if magic[:2] == b"\x1f\x8b":
        return _zlib_stream(chunks, zlib.decompressobj(16 + zlib.MAX_WBITS))
    if magic[:6] == b"\xfd7zXZ\x00":
        return _obj_stream(chunks, lzma.LZMADecompressor(lzma.FORMAT_XZ))
    if magic[:3] == b"\x5d\x00\x00":
        return _obj_stream(chunks, lzma.LZMADecompressor(lzma.FORMAT_ALONE))
    if magic[:3] == b"BZh":
        return _obj_stream(chunks, bz2.BZ2Decompressor())
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        return _obj_stream(chunks, zstandard.ZstdDecompressor().decompressobj())
    if magic[:4] == LZ4_LEGACY:
        return _lz4_legacy(chunks)
    if magic[:4] == b"\x04\x22\x4d\x18":
        import lz4.frame

        return _obj_stream(chunks, lz4.frame.LZ4FrameDecompressor())
    raise PreflightError(f"initramfs: unknown compression (magic {magic[:4].hex()})")


def _zlib_stream(chunks: Iterator[bytes], d: zlib._Decompress) -> Iterator[bytes]:
    try:
        for c in chunks:
            while c:
                yield d.decompress(c, CHUNK)
                c = d.unconsumed_tail
            if d.eof:
                return
    except zlib.error as exc:
        raise PreflightError(f"initramfs: gzip data is corrupt: {exc}") from exc


def _obj_stream(chunks: Iterator[bytes], d: object) -> Iterator[bytes]:
    decompress = d.decompress  # type: ignore[attr-defined]
    try:
        for c in chunks:
            out = decompress(c)
            if out:
                yield out
            if getattr(d, "eof", False):
                return
    except (lzma.LZMAError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise PreflightError(f"initramfs: compressed data is corrupt: {exc}") from exc


def _lz4_legacy(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Kernel lz4 format: magic, then blocks of (le32 compressed size, data) up to 8 MiB each."""
    import lz4.block

    s = _Stream(chunks)
    s.read(4)
    while True:
        head = s.read(4)
        if len(head) < 4 or head == LZ4_LEGACY:
            if head == LZ4_LEGACY:
                continue
            return
        n = int.from_bytes(head, "little")
        if n == 0 or n > LZ4_LEGACY_BLOCK + (LZ4_LEGACY_BLOCK >> 8) + 64:
            return  # end of stream (padding or next member)
        block = s.read(n)
        try:
            yield lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        except Exception as exc:  # lz4.block raises LZ4BlockError (no public base)
            raise PreflightError(f"initramfs: lz4 data is corrupt: {exc}") from exc


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a
