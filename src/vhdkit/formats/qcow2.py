"""qcow2 (versions 2 and 3) read natively, with vhdkit's own allocation map.

The L1 table is read once at open; L2 tables are read when a read or ``extents()`` needs them,
checked as a whole (every host offset inside the file, aligned) and kept in a small LRU. A read
walks the clusters it covers in runs: contiguous host clusters become one ``pread`` straight
into the caller's buffer, zero clusters are filled, unallocated ones come from the backing file
(or read as zeros), compressed ones are inflated (deflate or zstd) into a bounded buffer.
Unallocated clusters are never read. Reads use ``os.pread`` only (no shared file position) and
the caches are guarded by a lock: upload reads from several threads.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import zstandard

from ..errors import DiskIOError, FormatError, ParentNotFound, UnsupportedDisk
from ..extents import Extent, merge, subtract
from .base import ReadsInto, VirtualDisk, open_fd, pread_into, zero_fill
from .detect import detect
from .qcow2_header import Qcow2Header, Snapshot, parse_header, read_exact, read_snapshots
from .qcow2_structs import L1_OFFSET_MASK, L2_COMPRESSED, L2_OFFSET_MASK, L2_ZERO, SUBCLUSTERS

if TYPE_CHECKING:
    from .opener import ChainContext

try:  # ISA-L inflates the same raw deflate streams about twice as fast as zlib
    from isal import isal_zlib

    _inflater: Any = isal_zlib.decompressobj
    _isal_error: Any = isal_zlib.error  # an exception class; typed otherwise by its stubs
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _isal_error)
except ImportError:  # pragma: no cover - isal is a dependency; zlib reads the same data
    _inflater = zlib.decompressobj
    _INFLATE_ERRORS = (zlib.error,)

_DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (*_INFLATE_ERRORS, zstandard.ZstdError,
                                                   ValueError)

#: Cluster kinds in a decoded L2 table.
UNALLOC, ZERO, DATA, COMPRESSED, MIXED = 0, 1, 2, 3, 4
#: Bytes of decoded L2 tables and of inflated clusters kept in memory.
L2_CACHE_BYTES = 32 * 1024 * 1024
INFLATE_CACHE_BYTES = 8 * 1024 * 1024
#: Compressed clusters in one read from which inflating goes to the thread pool.
PARALLEL_MIN = 4
FULL = 0xFFFF_FFFF

#: QEMU's names of backing formats -> vhdkit's reader (or refused container) keys.
QEMU_FORMATS = {"qcow2": "qcow2", "raw": "raw", "file": "raw", "vpc": "vhd", "vhdx": "vhdx",
                "vmdk": "vmdk", "vdi": "vdi", "qcow": "qcow1", "qed": "qed",
                "parallels": "parallels", "dmg": "dmg", "luks": "luks"}


class _Table(NamedTuple):
    """One decoded L2 table, cut to the clusters inside the virtual disk."""

    kinds: np.ndarray  # uint8 cluster kinds
    host: np.ndarray  # int64 host offsets (data clusters; compressed: byte offset)
    sectors: np.ndarray  # int64 512-byte sectors of compressed data (0 otherwise)
    bitmap: np.ndarray | None  # uint64 extended L2 bitmaps (alloc low, zero high)


class Qcow2Disk(ReadsInto):
    kind = "qcow2"

    def __init__(self, path: str, fd: int, file_size: int, header: Qcow2Header,
                 snapshots: list[Snapshot], backing: VirtualDisk | None) -> None:
        self.path = path
        self.header = header
        self.snapshots = snapshots
        self.backing = backing
        self._fd = fd
        self._file_size = file_size
        h = header
        self._cb = h.cluster_bits
        self._cs = h.cluster_size
        self._entries = h.l2_entries
        self._l2_shift = h.cluster_bits + (h.l2_entries.bit_length() - 1)
        self._clusters = -(-h.size // self._cs)
        # Compressed entries: x = 62 - (cluster_bits - 8) bits of byte offset, then sectors.
        self._csize_shift = 62 - (self._cb - 8)
        self._csize_mask = (1 << (self._cb - 8)) - 1
        self._l1 = self._read_l1()
        self._lock = threading.Lock()
        self._tables: OrderedDict[int, _Table] = OrderedDict()
        self._max_tables = max(4, L2_CACHE_BYTES // (4 * self._cs))
        self._inflated: OrderedDict[int, bytes] = OrderedDict()
        self._max_inflated = max(2, INFLATE_CACHE_BYTES // self._cs)
        self._extents: list[Extent] | None = None

    # -- facts -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def dirty(self) -> bool:
        return self.header.dirty

    @property
    def corrupt(self) -> bool:
        return self.header.corrupt

    def facts(self) -> dict[str, Any]:
        h = self.header
        return {
            "format": "qcow2",
            "subformat": f"v{h.version}",
            "cluster_size": h.cluster_size,
            "compression_type": h.compression,
            "extended_l2": h.extended_l2,
            "backing_file": h.backing_file,
            "backing_format": h.backing_format,
            "backing_path": self.backing.path if self.backing is not None else None,
            "snapshots": [asdict(s) for s in self.snapshots],
            "dirty": h.dirty,
            "corrupt": h.corrupt,
            "lazy_refcounts": bool(h.compatible & 1),
            "refcount_order": h.refcount_order,
            "l1_entries": h.l1_size,
            "allocated_l2_tables": int(np.count_nonzero(self._l1)),
        }

    def chain(self) -> list[VirtualDisk]:
        return [self, *(self.backing.chain() if self.backing is not None else [])]

    # -- tables ------------------------------------------------------------------------------

    def _read_l1(self) -> np.ndarray:
        """The L2 table offsets of the clusters inside the disk (0: no table), all checked."""
        h = self.header
        n = h.l1_needed
        raw = read_exact(self._fd, h.l1_table_offset, n * 8, self._file_size, "l1_table")
        l1 = (np.frombuffer(raw, dtype=">u8") & np.uint64(L1_OFFSET_MASK)).astype(np.int64)
        bad = np.flatnonzero((l1 % self._cs != 0) | ((l1 != 0) & (l1 + self._cs > self._file_size)))
        if len(bad):
            i = int(bad[0])
            off = int(l1[i])
            problem = (f"L2 table offset {off} is not aligned to the cluster size" if off % self._cs
                       else f"L2 table at {off} runs past the end of the file "
                            f"({self._file_size} bytes)")
            raise FormatError(f"l1_table[{i}]", h.l1_table_offset + 8 * i, problem)
        return np.asarray(l1, dtype=np.int64)

    def _table(self, l1i: int) -> _Table | None:
        off = int(self._l1[l1i])
        if not off:
            return None
        with self._lock:
            t = self._tables.get(l1i)
            if t is not None:
                self._tables.move_to_end(l1i)
                return t
        t = self._decode(l1i, off)
        with self._lock:
            self._tables[l1i] = t
            while len(self._tables) > self._max_tables:
                self._tables.popitem(last=False)
        return t

    def _decode(self, l1i: int, table_off: int) -> _Table:
        n = min(self._entries, self._clusters - l1i * self._entries)
        ext = self.header.extended_l2
        width = 16 if ext else 8
        raw = read_exact(self._fd, table_off, n * width, self._file_size, f"l2_table[{l1i}]")
        words = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        std = words[0::2] if ext else words
        bitmap = words[1::2] if ext else None
        comp = (std & np.uint64(L2_COMPRESSED)) != 0
        host = np.where(comp, std & np.uint64((1 << self._csize_shift) - 1),
                        std & np.uint64(L2_OFFSET_MASK)).astype(np.int64)
        sectors = np.where(comp, ((std >> np.uint64(self._csize_shift))
                                  & np.uint64(self._csize_mask)).astype(np.int64) + 1, 0)
        kinds = np.full(n, UNALLOC, dtype=np.uint8)
        plain = ~comp
        if bitmap is None:
            zero = plain & ((std & np.uint64(L2_ZERO)) != 0)
            if self.header.version == 2 and zero.any():
                self._bad(l1i, table_off, width, zero, "zero flag in a version 2 image")
            kinds[plain & ~zero & (host != 0)] = DATA
            kinds[zero] = ZERO
        else:
            alloc = bitmap & np.uint64(FULL)
            zbits = bitmap >> np.uint64(32)
            self._bad(l1i, table_off, width, plain & ((alloc & zbits) != 0),
                      "a subcluster is both allocated and zero")
            self._bad(l1i, table_off, width, plain & (host == 0) & (alloc != 0),
                      "allocated subclusters without a host cluster")
            kinds[plain & ((alloc | zbits) != 0)] = MIXED
            kinds[plain & (alloc == np.uint64(FULL))] = DATA
            kinds[plain & (zbits == np.uint64(FULL))] = ZERO
        kinds[comp] = COMPRESSED
        reads = (kinds == DATA) | (kinds == MIXED)
        self._bad(l1i, table_off, width, reads & (host % self._cs != 0),
                  "host cluster offset is not aligned to the cluster size")
        self._bad(l1i, table_off, width, (reads | comp) & (host >= self._file_size),
                  f"host offset lies past the end of the file ({self._file_size} bytes)")
        return _Table(kinds, host, sectors, bitmap)

    def _bad(self, l1i: int, table_off: int, width: int, mask: np.ndarray, problem: str) -> None:
        hit = np.flatnonzero(mask)
        if len(hit):
            i = int(hit[0])
            raise FormatError(f"l2_table[{l1i}][{i}]", table_off + width * i, problem)

    # -- allocation map ----------------------------------------------------------------------

    def extents(self) -> list[Extent]:
        if self._extents is None:
            data, zero = self._own_map()
            out = data
            if self.backing is not None:
                below = [e for e in self.backing.extents() if e.start < self.size]
                out = data + subtract(below, zero)
            size = self.size
            self._extents = [Extent(e.start, min(e.end, size) - e.start)
                             for e in merge(out) if e.start < size]
        return list(self._extents)

    def _own_map(self) -> tuple[list[Extent], list[Extent]]:
        """(ranges whose data this image holds, ranges it marks as zeros) - never the data."""
        data: list[Extent] = []
        zero: list[Extent] = []
        sub = self._cs // SUBCLUSTERS
        for l1i in np.flatnonzero(self._l1).tolist():
            t = self._table(l1i)
            assert t is not None
            base = l1i << self._l2_shift
            k = t.kinds
            data += _runs((k == DATA) | (k == COMPRESSED), base, self._cb)
            zero += _runs(k == ZERO, base, self._cb)
            if t.bitmap is not None:
                for i in np.flatnonzero(k == MIXED).tolist():
                    bm = int(t.bitmap[i])
                    start = base + (i << self._cb)
                    for j in range(SUBCLUSTERS):
                        if bm >> j & 1:
                            data.append(Extent(start + j * sub, sub))
                        elif bm >> (32 + j) & 1:
                            zero.append(Extent(start + j * sub, sub))
        return merge(data), merge(zero)

    # -- reads -------------------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview) -> None:
        limit = max(0, min(len(buf), self.size - offset))
        zero_fill(buf[limit:])
        pos, end = offset, offset + limit
        span = 1 << self._l2_shift
        while pos < end:
            l1i = pos >> self._l2_shift
            base = l1i << self._l2_shift
            stop = min(end, base + span)
            t = self._table(l1i)
            if t is None:
                self._below(buf, offset, pos, stop)
            else:
                self._read_table(t, base, buf, offset, pos, stop)
            pos = stop

    def _read_table(self, t: _Table, base: int, buf: memoryview, boff: int, pos: int,
                    stop: int) -> None:
        cb, cs = self._cb, self._cs
        c0 = (pos - base) >> cb
        c1 = (stop - base + cs - 1) >> cb
        kinds = t.kinds[c0:c1]
        host = t.host[c0:c1]
        if len(kinds) > 1:
            brk = ((kinds[1:] != kinds[:-1]) | (kinds[1:] >= COMPRESSED)
                   | ((kinds[1:] == DATA) & (host[1:] != host[:-1] + cs)))
            bounds = [0, *(np.flatnonzero(brk) + 1).tolist(), len(kinds)]
        else:
            bounds = [0, len(kinds)]
        klist = kinds.tolist()
        inflated = self._inflate_many(t, c0, kinds, host)
        for a, b in itertools.pairwise(bounds):
            cstart = base + ((c0 + a) << cb)
            rs, re = max(pos, cstart), min(stop, base + ((c0 + b) << cb))
            part = buf[rs - boff: re - boff]
            kind = klist[a]
            if kind == DATA:
                pread_into(self._fd, part, int(host[a]) + rs - cstart)
            elif kind == ZERO:
                zero_fill(part)
            elif kind == UNALLOC:
                self._below(buf, boff, rs, re)
            elif kind == COMPRESSED:
                data = inflated.get(int(host[a])) or self._inflate(int(host[a]),
                                                                    int(t.sectors[c0 + a]))
                part[:] = data[rs - cstart: re - cstart]
            else:
                assert t.bitmap is not None
                self._read_mixed(int(t.bitmap[c0 + a]), int(host[a]), cstart, buf, boff, rs, re)

    def _read_mixed(self, bm: int, host: int, cstart: int, buf: memoryview, boff: int,
                    rs: int, re: int) -> None:
        """A cluster whose subclusters differ: allocated, zero, or from the backing file."""
        sub = self._cs // SUBCLUSTERS
        for j in range((rs - cstart) // sub, (re - cstart + sub - 1) // sub):
            s = max(rs, cstart + j * sub)
            e = min(re, cstart + (j + 1) * sub)
            part = buf[s - boff: e - boff]
            if bm >> j & 1:
                pread_into(self._fd, part, host + s - cstart)
            elif bm >> (32 + j) & 1:
                zero_fill(part)
            else:
                self._below(buf, boff, s, e)

    def _below(self, buf: memoryview, boff: int, start: int, end: int) -> None:
        """Unallocated here: the backing file's bytes (zeros past its end), or zeros."""
        part = buf[start - boff: end - boff]
        if self.backing is None:
            zero_fill(part)
        else:
            self.backing.read_into(start, part)

    def _inflate_many(self, t: _Table, c0: int, kinds: np.ndarray,
                      host: np.ndarray) -> dict[int, bytes]:
        """Inflate the compressed clusters of one read on a few threads (zlib and zstd release
        the GIL), their data fetched in one pread when it lies together (qemu-img writes
        compressed clusters one after the other)."""
        idx = np.flatnonzero(kinds == COMPRESSED)
        if len(idx) < PARALLEL_MIN:
            return {}
        hosts = host[idx].tolist()
        lengths = [min(n * 512 - (h & 511), self._file_size - h)
                   for h, n in zip(hosts, t.sectors[c0 + idx].tolist(), strict=True)]
        lo = min(hosts)
        hi = max(h + n for h, n in zip(hosts, lengths, strict=True))
        raws: list[bytes | memoryview]
        if hi - lo <= 2 * sum(lengths):
            blob = memoryview(os.pread(self._fd, hi - lo, lo))
            raws = [blob[h - lo: h - lo + n] for h, n in zip(hosts, lengths, strict=True)]
        else:
            raws = [os.pread(self._fd, n, h) for h, n in zip(hosts, lengths, strict=True)]
        return dict(zip(hosts, _pool().map(self._decompress, raws, hosts), strict=True))

    def _inflate(self, host: int, sectors: int) -> bytes:
        with self._lock:
            hit = self._inflated.get(host)
            if hit is not None:
                self._inflated.move_to_end(host)
                return hit
        # The sector count rounds up: the last cluster of the file may end before it.
        length = min(sectors * 512 - (host & 511), self._file_size - host)
        raw = os.pread(self._fd, length, host)
        data = self._decompress(raw, host)
        with self._lock:
            self._inflated[host] = data
            while len(self._inflated) > self._max_inflated:
                self._inflated.popitem(last=False)
        return data

    def _decompress(self, raw: bytes | memoryview, host: int) -> bytes:
        cs = self._cs
        try:
            if self.header.compression_type == 0:
                data: bytes = _inflater(-15).decompress(raw, cs)  # bounded to a cluster
            else:
                data = _zstd_cluster(raw, cs)
        except _DECOMPRESS_ERRORS as exc:
            raise FormatError("compressed_cluster", host,
                              f"{self.header.compression} data does not decompress: "
                              f"{exc}") from exc
        if len(data) != cs:
            raise FormatError("compressed_cluster", host, f"decompresses to {len(data)} bytes, "
                                                          f"not a cluster of {cs}")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.backing is not None:
            self.backing.close()


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """Threads shared by every qcow2 disk for inflating clusters."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2),
                                       thread_name_prefix="vhdkit-inflate")
        return _POOL


def _runs(mask: np.ndarray, base: int, cb: int) -> list[Extent]:
    """Byte ranges of the runs of True clusters in ``mask``."""
    if not mask.any():
        return []
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=0, append=0))
    return [Extent(base + (s << cb), (e - s) << cb)
            for s, e in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True)]


def _zstd_cluster(raw: bytes | memoryview, cs: int) -> bytes:
    """One zstd frame's first ``cs`` bytes: the output never grows past a cluster, and the
    sector padding after the frame is ignored."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw),
                                                        read_across_frames=False)
    parts: list[bytes] = []
    got = 0
    while got < cs:
        chunk = reader.read(cs - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def open_qcow2(path: str, fd: int, file_size: int, parent: str | None,
               ctx: ChainContext) -> VirtualDisk:
    """A qcow2 image and its backing chain; takes ownership of ``fd`` (closed if this fails).

    ``ctx`` is the opener's ChainContext (resolve, open_parent); ``parent`` an explicit backing
    file named by the user, which replaces the one the header names.
    """
    backing: VirtualDisk | None = None
    try:
        header = parse_header(fd, file_size, path)
        snapshots = read_snapshots(fd, file_size, header)
        if header.backing_file is not None:
            backing = _open_backing(path, header, parent, ctx)
        return Qcow2Disk(path, fd, file_size, header, snapshots, backing)
    except BaseException:
        os.close(fd)
        if backing is not None:
            backing.close()
        raise


def _open_backing(path: str, header: Qcow2Header, parent: str | None,
               ctx: ChainContext) -> VirtualDisk:
    name = header.backing_file
    assert name is not None
    target = parent if parent is not None else ctx.resolve(path, name)
    if not os.path.exists(target):
        raise ParentNotFound(f"{path}: backing file {name!r} not found (looked for {target}); "
                             "give it with --parent PATH")
    want: str | None = None
    if header.backing_format is not None:
        want = QEMU_FORMATS.get(header.backing_format)
        if want is None:
            raise ParentNotFound(f"{path}: backing format {header.backing_format!r} is not "
                                 "one vhdkit knows")
    try:
        fd, size = open_fd(target)
        try:
            found = detect(fd, size, target)
        finally:
            os.close(fd)
    except (UnsupportedDisk, DiskIOError, FormatError) as exc:
        raise ParentNotFound(f"{path}: backing file {target} is not a disk vhdkit reads: "
                             f"{exc}") from exc
    if want is not None and found != want:
        raise ParentNotFound(f"{path}: backing file {target} is a {found} image, but the qcow2 "
                             f"header names its format as {header.backing_format!r}")
    return ctx.open_parent(target, found)
