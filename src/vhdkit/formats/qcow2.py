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
import struct
import threading
import zlib
from bisect import bisect_right
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

import zstandard

from ..errors import DiskIOError, FormatError, ParentNotFound, UnsupportedDisk
from ..extents import ZEROS, Extent, merge, subtract
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

#: Cluster kinds of the runs of a decoded L2 table (a cluster in no run is unallocated).
ZERO, DATA, COMPRESSED, MIXED = 1, 2, 3, 4
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


class _Run(NamedTuple):
    """Clusters ``[first, first + clusters)`` of one L2 table that read alike."""

    first: int
    clusters: int
    kind: int
    #: DATA and MIXED: host offset of the first cluster (MIXED: 0 if none); COMPRESSED: the
    #: byte offset of its data
    host: int
    #: COMPRESSED: 512-byte sectors of compressed data; MIXED: the subcluster bitmap
    extra: int = 0


class _Table(NamedTuple):
    """One decoded L2 table, cut to the clusters inside the virtual disk: runs in cluster
    order (a cluster in no run is unallocated here) and their first clusters, to bisect."""

    runs: list[_Run]
    firsts: list[int]


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
        self._ext = h.extended_l2
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
            "allocated_l2_tables": len(self._l1),
        }

    def chain(self) -> list[VirtualDisk]:
        return [self, *(self.backing.chain() if self.backing is not None else [])]

    # -- tables ------------------------------------------------------------------------------

    def _read_l1(self) -> dict[int, int]:
        """L1 index -> offset of its L2 table, for the tables that exist, all checked."""
        h = self.header
        n = h.l1_needed
        raw = read_exact(self._fd, h.l1_table_offset, n * 8, self._file_size, "l1_table")
        words = struct.unpack(f">{n}Q", raw)
        l1: dict[int, int] = {}
        for i in itertools.compress(range(n), words):  # C skips the empty entries
            off = words[i] & L1_OFFSET_MASK
            if not off:
                continue
            if off % self._cs:
                problem = f"L2 table offset {off} is not aligned to the cluster size"
            elif off + self._cs > self._file_size:
                problem = (f"L2 table at {off} runs past the end of the file "
                           f"({self._file_size} bytes)")
            else:
                l1[i] = off
                continue
            raise FormatError(f"l1_table[{i}]", h.l1_table_offset + 8 * i, problem)
        return l1

    def _table(self, l1i: int) -> _Table | None:
        off = self._l1.get(l1i)
        if off is None:
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
        """The runs of one L2 table. The entries are unpacked in C; Python then takes one step
        per run where it can: a span of empty entries, and a run of data clusters whose host
        clusters follow one another (what qemu-img writes), are measured by comparing spans of
        the table with what they would hold (memcmp), in doubling and halving steps. A data
        cluster on its own costs one short step; any other entry goes through ``_entry``."""
        n = min(self._entries, self._clusters - l1i * self._entries)
        ext = self._ext
        width = 16 if ext else 8
        raw = read_exact(self._fd, table_off, n * width, self._file_size, f"l2_table[{l1i}]")
        words = struct.unpack(f">{n * width // 8}Q", raw)  # in C, a few ns an entry
        cs, file_size = self._cs, self._file_size
        runs: list[_Run] = []
        i = 0
        while i < n:
            std = words[2 * i] if ext else words[i]
            if not std and not (ext and words[2 * i + 1]):
                i = _next_used(raw, words, i, n, ext)
                continue
            host = std & L2_OFFSET_MASK
            if (not ext and not std & (L2_COMPRESSED | L2_ZERO) and host
                    and not host % cs and host < file_size):
                # a data cluster (what _entry would say, in fewer steps: most entries are)
                clusters = 1
                if i + 1 < n and words[i + 1] == std + cs:
                    last = _chain_end(raw, i, n, std, cs)  # entries i+1..last follow entry i
                    over = host + (last - i) * cs - file_size
                    if over >= 0:  # name the first entry whose host cluster is past the end
                        k = last - over // cs
                        self._check_host(l1i, table_off, width, k, host + (k - i) * cs)
                    clusters = last - i + 1
                run = _Run(i, clusters, DATA, host)
            else:
                entry = self._entry(l1i, table_off, width, i, std, words[2 * i + 1] if ext else 0)
                if entry is None:
                    i += 1
                    continue
                run = entry
            prev = runs[-1] if runs else None
            if (prev is not None and prev.kind == run.kind and run.kind in (DATA, ZERO)
                    and prev.first + prev.clusters == i
                    and (run.kind == ZERO or run.host == prev.host + prev.clusters * cs)):
                runs[-1] = prev._replace(clusters=prev.clusters + run.clusters)
            else:
                runs.append(run)
            i += run.clusters
        return _Table(runs, [r.first for r in runs])

    def _entry(self, l1i: int, table_off: int, width: int, i: int, std: int,
               bitmap: int) -> _Run | None:
        """Entry ``i`` of an L2 table, checked; None when it leaves the cluster unallocated."""
        if std & L2_COMPRESSED:
            host = std & ((1 << self._csize_shift) - 1)
            self._check_host(l1i, table_off, width, i, host)
            return _Run(i, 1, COMPRESSED, host, ((std >> self._csize_shift) & self._csize_mask) + 1)
        host = std & L2_OFFSET_MASK
        problem = None
        if self._ext:
            alloc, zeros = bitmap & FULL, bitmap >> 32
            if alloc & zeros:
                problem = "a subcluster is both allocated and zero"
            elif host == 0 and alloc:
                problem = "allocated subclusters without a host cluster"
            elif alloc == FULL:
                kind = DATA
            elif zeros == FULL:
                return _Run(i, 1, ZERO, 0)
            elif alloc | zeros:
                kind = MIXED
            else:
                return None
        elif std & L2_ZERO:
            if self.header.version != 2:
                return _Run(i, 1, ZERO, 0)
            problem = "zero flag in a version 2 image"
        elif host:
            kind = DATA
        else:
            return None
        if problem is None and host % self._cs:
            problem = "host cluster offset is not aligned to the cluster size"
        if problem is not None:
            raise FormatError(f"l2_table[{l1i}][{i}]", table_off + width * i, problem)
        self._check_host(l1i, table_off, width, i, host)
        return _Run(i, 1, kind, host, bitmap if kind == MIXED else 0)

    def _check_host(self, l1i: int, table_off: int, width: int, i: int, host: int) -> None:
        if host >= self._file_size:
            raise FormatError(f"l2_table[{l1i}][{i}]", table_off + width * i,
                              f"host offset lies past the end of the file ({self._file_size} "
                              "bytes)")

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
        cb = self._cb
        sub = self._cs // SUBCLUSTERS
        for l1i in sorted(self._l1):
            t = self._table(l1i)
            assert t is not None
            base = l1i << self._l2_shift
            for r in t.runs:
                start = base + (r.first << cb)
                if r.kind == DATA or r.kind == COMPRESSED:
                    if data and data[-1].end == start:  # compressed clusters: one each
                        data[-1] = Extent(data[-1].start, data[-1].length + (r.clusters << cb))
                    else:
                        data.append(Extent(start, r.clusters << cb))
                elif r.kind == ZERO:
                    zero.append(Extent(start, r.clusters << cb))
                else:
                    for j in range(SUBCLUSTERS):
                        if r.extra >> j & 1:
                            data.append(Extent(start + j * sub, sub))
                        elif r.extra >> (32 + j) & 1:
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
        cb = self._cb
        c1 = (stop - base + self._cs - 1) >> cb
        runs = t.runs
        j = bisect_right(t.firsts, (pos - base) >> cb) - 1
        if j < 0 or base + ((runs[j].first + runs[j].clusters) << cb) <= pos:
            j += 1  # no run covers pos: start from the next one
        inflated = self._inflate_many(runs, j, c1)
        while pos < stop:
            if j >= len(runs) or runs[j].first >= c1:
                self._below(buf, boff, pos, stop)  # unallocated to the end of the read
                return
            r = runs[j]
            rstart = base + (r.first << cb)
            if rstart > pos:
                self._below(buf, boff, pos, rstart)
                pos = rstart
            rend = min(stop, base + ((r.first + r.clusters) << cb))
            part = buf[pos - boff: rend - boff]
            if r.kind == DATA:
                pread_into(self._fd, part, r.host + pos - rstart)
            elif r.kind == ZERO:
                zero_fill(part)
            elif r.kind == COMPRESSED:
                data = inflated.get(r.host) or self._inflate(r.host, r.extra)
                part[:] = data[pos - rstart: rend - rstart]
            else:
                self._read_mixed(r.extra, r.host, rstart, buf, boff, pos, rend)
            pos = rend
            j += 1

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

    def _inflate_many(self, runs: list[_Run], j: int, c1: int) -> dict[int, bytes]:
        """Inflate the compressed clusters of one read (runs ``j``... before cluster ``c1``) on
        a few threads (zlib and zstd release the GIL), their data fetched in one pread when it
        lies together (qemu-img writes compressed clusters one after the other)."""
        comp: list[_Run] = []
        for r in itertools.islice(runs, j, None):
            if r.first >= c1:
                break
            if r.kind == COMPRESSED:
                comp.append(r)
        if len(comp) < PARALLEL_MIN:
            return {}
        hosts = [r.host for r in comp]
        lengths = [min(r.extra * 512 - (r.host & 511), self._file_size - r.host) for r in comp]
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


def _next_used(raw: bytes, words: tuple[int, ...], i: int, n: int, ext: bool) -> int:
    """The first entry at or after ``i`` that is not empty (``n`` if none). Past a few empty
    entries, spans of them are compared with zeros, doubling while they hold, halving when not."""
    width = 16 if ext else 8
    for _ in range(4):
        if i >= n or ((words[2 * i] or words[2 * i + 1]) if ext else words[i]):
            return min(i, n)
        i += 1
    view, is_zero, most = memoryview(raw), ZEROS.startswith, len(ZEROS) // width
    step = 1
    while i < n:
        step = min(step, n - i, most)
        if is_zero(view[i * width: (i + step) * width]):
            i += step
            step *= 2
        elif step == 1:
            return i
        else:
            step //= 2
    return n


def _chain_end(raw: bytes, i: int, n: int, entry: int, cs: int) -> int:
    """The last index j such that entries i..j of a standard L2 table are ``entry``,
    ``entry + cs``, ``entry + 2 cs``...: a run of data clusters whose host clusters follow one
    another (same flags). ``entry`` is a data cluster's: no flag bit above the offset is set
    that adding n clusters could carry into."""
    j, step = i + 1, 1
    while j < n:
        step = min(step, 1 << ((n - j).bit_length() - 1))  # a power of two: see _ramp
        if raw.startswith(_ramp(entry + (j - i) * cs, cs, step), 8 * j):
            j += step
            step *= 2
        elif step == 1:
            break
        else:
            step //= 2
    return j - 1


#: k (a power of two) -> (sum of x^(k-1-m), sum of m x^(k-1-m)) over m < k, with x = 2^64:
#: k big-endian 64-bit words holding h, h + d, ..., h + (k-1) d are h * first + d * second.
_RAMPS: dict[int, tuple[int, int]] = {1: (1, 0)}


def _ramp(start: int, step: int, k: int) -> bytes:
    """``k`` big-endian 64-bit words: start, start + step, ... (built in C, by two products)."""
    if k not in _RAMPS:
        half = k // 2
        _ramp(0, 0, half)
        r, s = _RAMPS[half]
        _RAMPS[k] = ((r << (64 * half)) + r, (s << (64 * half)) + s + half * r)
    r, s = _RAMPS[k]
    return (start * r + step * s).to_bytes(8 * k, "big")


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
