"""A VMDK sparse extent (KDMV): header, grain directory and tables, grains (plain or deflated).

The allocation map is read once, when the extent is opened: the grain directory and every grain
table it names, each checked against the extent's size before it is read. Memory is bounded by
the file: the directory must lie inside the file, and a table named by several directory entries
is read and kept once.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import ClassVar, cast

import construct as cs
import numpy as np

from ..errors import FormatError, UnsupportedDisk
from ..extents import Extent
from .base import zero_fill
from .region import Region
from .vmdk_descriptor import MAX_DESCRIPTOR, Descriptor, parse_descriptor
from .vmdk_structs import (
    COMPRESS_DEFLATE,
    COMPRESS_NONE,
    COWD_FIELD_OFFSETS,
    COWD_HEADER,
    COWD_MAGIC,
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_REDUNDANT_GT,
    FLAG_ZEROED_GRAIN,
    FOOTER_TAIL,
    GD_AT_END,
    GRAIN_MARKER_SIZE,
    GTE_ZEROED,
    HEADER_FIELD_OFFSETS,
    MARKER_FOOTER,
    META_MARKER,
    SECTOR,
    SPARSE_HEADER,
    SPARSE_MAGIC,
)

#: largest grain accepted: VMware writes 64 KiB grains; qemu accepts up to 1 GiB, which would
#: make one grain's decompression buffer that large
MAX_GRAIN_SECTORS = 2048
MAX_GTES_PER_GT = 4096
#: extents() returns at most this many ranges per extent (see coarsen)
MAX_EXTENTS = 1 << 18
#: bytes of adjacent grain tables read at once
TABLE_BATCH = 4 << 20
#: bytes of decompressed grains kept (per extent) for reads smaller than a grain
GRAIN_CACHE_BYTES = 4 << 20
#: a deflated grain is never much larger than the grain itself
COMPRESSED_SLACK = 4096
#: Compressed grains of one read are inflated in parallel (the inflaters release the GIL), on
#: all cores but one, which convert's writer (or upload's senders) needs: on 2 quiet cores a
#: 2-thread pool made convert 1.2x slower than inflating serially (benchmarks/bench_vmdk.py).
POOL_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))
PARALLEL_MIN = 4


def _inflater() -> tuple[ModuleType, tuple[type[Exception], ...]]:
    """ISA-L's inflate (python-isal) is about 2.4x faster than zlib's on grains; zlib is the
    fallback where isal has no wheel. Both take ``max_length``, which bounds a grain's output."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency
        return zlib, (zlib.error,)
    return isal_zlib, (cast("type[Exception]", isal_zlib.error), zlib.error)


_INFLATE, _INFLATE_ERRORS = _inflater()

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix="vhdkit-inflate")
        return _pool


#: fills ``buf`` with what lies under a range of the extent that it does not hold (extent offset)
Absent = Callable[[int, memoryview], None]


class SparseExtent:
    """One KDMV sparse extent over a :class:`Region` (a whole file, or a member of an OVA)."""

    def __init__(self, region: Region) -> None:
        self.region = region
        raw = region.read_exact(0, SECTOR, "sparse header")
        h = SPARSE_HEADER.parse(raw)
        if h.magic != SPARSE_MAGIC:
            raise FormatError("header.magic", 0, f"expected b'KDMV', found {h.magic!r}")
        self.header_offset = 0
        if h.gd_offset == GD_AT_END:
            h = self._footer()
        self.header = h
        self._check_header(h)
        self.version = int(h.version)
        self.flags = int(h.flags)
        self.grain_bytes = int(h.grain_size) * SECTOR
        self.gtes = int(h.num_gtes_per_gt)
        self.capacity = int(h.capacity) * SECTOR
        self.compressed = bool(self.flags & FLAG_COMPRESSED)
        self.markers = bool(self.flags & FLAG_MARKERS)
        self.zeroed_grain = bool(self.flags & FLAG_ZEROED_GRAIN)
        self.descriptor: Descriptor | None = self._descriptor(h)
        self.gd, self._tables = self._load_map()
        self._init_caches()

    def _init_caches(self) -> None:
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._allocated: tuple[list[Extent], list[Extent]] | None = None
        self._lock = threading.Lock()

    # -- header ------------------------------------------------------------------------------

    #: byte offset of each header field (for messages)
    FIELD_OFFSETS: ClassVar[Mapping[str, int]] = HEADER_FIELD_OFFSETS

    def _field(self, name: str) -> int:
        return self.header_offset + self.FIELD_OFFSETS[name]

    def _footer(self) -> cs.Container:
        """The header copy at the end of a streamOptimized extent (GD_AT_END in the head)."""
        size = self.region.length
        if size < SECTOR + FOOTER_TAIL:
            raise FormatError("header.gd_offset", HEADER_FIELD_OFFSETS["gd_offset"],
                              "the grain directory is at the end, but the file has no footer")
        marker = META_MARKER.parse(self.region.read_exact(size - FOOTER_TAIL, 16, "footer marker"))
        if marker.size != 0 or marker.type != MARKER_FOOTER:
            raise FormatError("footer marker", size - FOOTER_TAIL,
                              "the grain directory is at the end, but no footer marker precedes "
                              "the footer")
        self.header_offset = size - 2 * SECTOR
        h = SPARSE_HEADER.parse(self.region.read_exact(self.header_offset, SECTOR, "footer"))
        if h.magic != SPARSE_MAGIC:
            raise FormatError("footer.magic", self.header_offset,
                              f"expected b'KDMV', found {h.magic!r}")
        if h.gd_offset == GD_AT_END:
            raise FormatError("footer.gd_offset", self._field("gd_offset"),
                              "the footer does not say where the grain directory is")
        return h

    def _check_header(self, h: cs.Container) -> None:
        if h.version not in (1, 2, 3):
            raise FormatError("header.version", self._field("version"),
                              f"unknown sparse extent version {h.version}")
        g = h.grain_size
        if g < 1 or g > MAX_GRAIN_SECTORS or g & (g - 1):
            raise FormatError("header.grain_size", self._field("grain_size"),
                              f"{g} sectors; a grain is a power of two up to "
                              f"{MAX_GRAIN_SECTORS} sectors")
        if not 1 <= h.num_gtes_per_gt <= MAX_GTES_PER_GT:
            raise FormatError("header.num_gtes_per_gt", self._field("num_gtes_per_gt"),
                              f"{h.num_gtes_per_gt} entries per grain table; expected 1.."
                              f"{MAX_GTES_PER_GT} (VMware writes 512)")
        if h.flags & FLAG_COMPRESSED:
            if h.compress_algorithm == COMPRESS_NONE:
                raise FormatError("header.compress_algorithm", self._field("compress_algorithm"),
                                  "grains are marked compressed but no algorithm is named")
            if h.compress_algorithm != COMPRESS_DEFLATE:
                raise UnsupportedDisk(f"{self.region.name}: grains compressed with algorithm "
                                      f"{h.compress_algorithm}; vhdkit reads deflate (1) only")
        if h.capacity > (1 << 55):  # 16 EiB: no offset computed from it may overflow 64 bits
            raise FormatError("header.capacity", self._field("capacity"),
                              f"{h.capacity} sectors is not a disk size")

    def _descriptor(self, h: cs.Container) -> Descriptor | None:
        if h.descriptor_offset == 0 or h.descriptor_size == 0:
            return None
        if h.descriptor_size * SECTOR > MAX_DESCRIPTOR:
            raise FormatError("header.descriptor_size", self._field("descriptor_size"),
                              f"{h.descriptor_size} sectors; an embedded descriptor is at most "
                              f"{MAX_DESCRIPTOR // SECTOR}")
        off = h.descriptor_offset * SECTOR
        raw = self.region.read_exact(off, h.descriptor_size * SECTOR, "header.descriptor_offset",
                                     self._field("descriptor_offset"))
        return parse_descriptor(raw, off)

    # -- allocation map ----------------------------------------------------------------------

    def _load_map(self) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        h = self.header
        try:
            return self._read_map(int(h.gd_offset), "gd_offset")
        except FormatError as primary:
            # The redundant directory is VMware's copy for exactly this case.
            if not (self.flags & FLAG_REDUNDANT_GT) or h.rgd_offset in (0, GD_AT_END):
                raise
            try:
                return self._read_map(int(h.rgd_offset), "rgd_offset")
            except FormatError:
                raise primary from None

    def _read_map(self, gd_sector: int, field: str, entries: int | None = None
                  ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        if entries is None:
            entries = -(-self.capacity // (self.grain_bytes * self.gtes))
        gd_off = gd_sector * SECTOR
        raw = self.region.read_exact(gd_off, entries * 4, f"header.{field}", self._field(field))
        gd = np.frombuffer(raw, dtype="<u4")
        used = np.flatnonzero(gd)
        size = self.region.length
        gt_bytes = self.gtes * 4
        bad = np.flatnonzero(gd[used].astype(np.uint64) * SECTOR + gt_bytes > size)
        if len(bad):
            i = int(used[bad[0]])
            raise FormatError(f"grain directory entry {i}", gd_off + 4 * i,
                              f"grain table at byte {int(gd[i]) * SECTOR} lies past the end of "
                              f"{self.region.name} ({size} bytes)")
        # Tables are read once each (a table named twice is one table), adjacent ones in one
        # read; all-zero tables (qemu preallocates them) share one array.
        sectors = np.unique(gd[used]).tolist()
        empty = np.zeros(self.gtes, dtype="<u4")
        tables: dict[int, np.ndarray] = {}
        step = gt_bytes // SECTOR if gt_bytes % SECTOR == 0 else 0
        i = 0
        while i < len(sectors):
            j = i + 1
            while (step and j < len(sectors) and sectors[j] == sectors[j - 1] + step
                   and (j - i + 1) * gt_bytes <= TABLE_BATCH):
                j += 1
            first = sectors[i] * SECTOR
            block = np.frombuffer(self.region.read_exact(first, (j - i) * gt_bytes,
                                                         "grain table"), dtype="<u4")
            rows = block.reshape(j - i, self.gtes)
            for k in range(j - i):
                tables[sectors[i + k]] = empty
            for k in np.flatnonzero(rows.any(axis=1)).tolist():
                self._check_table(rows[k], first + k * gt_bytes)
                tables[sectors[i + k]] = rows[k].copy()
            i = j
        self._check_sharing(gd, used, tables, field)
        return gd, tables

    def _check_sharing(self, gd: np.ndarray, used: np.ndarray, tables: dict[int, np.ndarray],
                       field: str) -> None:
        """Every allocated grain has bytes of its own in the file (a sector at least, when
        compressed): tables that name more grains than the file holds share grains, which would
        make reading grow without the file growing."""
        each = SECTOR if self.compressed else self.grain_bytes
        sectors, times = np.unique(gd[used], return_counts=True)
        named = sum(int(np.count_nonzero(self._data_mask(tables[s]))) * m
                    for s, m in zip(sectors.tolist(), times.tolist(), strict=True))
        if named * each > self.region.length:
            raise FormatError(f"header.{field}", self._field(field),
                              f"the grain tables name {named} allocated grains, but "
                              f"{self.region.name} ({self.region.length} bytes) holds at most "
                              f"{self.region.length // each}: grains are shared")

    def _data_mask(self, gt: np.ndarray) -> np.ndarray:
        return gt > GTE_ZEROED if self.zeroed_grain else gt > 0

    def _check_table(self, gt: np.ndarray, gt_off: int) -> None:
        data = self._data_mask(gt)
        # A plain grain must lie wholly in the file; a compressed one needs at least its marker
        # (its length is checked when it is read).
        need = GRAIN_MARKER_SIZE if self.compressed else self.grain_bytes
        ends = gt.astype(np.uint64) * SECTOR + need
        bad = np.flatnonzero(data & (ends > self.region.length))
        if len(bad):
            i = int(bad[0])
            raise FormatError(f"grain table entry {i}", gt_off + 4 * i,
                              f"grain at byte {int(gt[i]) * SECTOR} lies past the end of "
                              f"{self.region.name} ({self.region.length} bytes)")

    def _entry(self, grain: int) -> int:
        gi, ti = divmod(grain, self.gtes)
        if gi >= len(self.gd):
            return 0
        sector = int(self.gd[gi])
        if sector == 0:
            return 0
        return int(self._tables[sector][ti])

    def allocated(self) -> tuple[list[Extent], list[Extent]]:
        """(ranges with data, ranges of zeroed grains), extent-relative, clipped to capacity;
        computed once (a descriptor may name one sparse file in many extent lines)."""
        with self._lock:
            if self._allocated is None:
                self._allocated = self._compute_allocated()
            return self._allocated

    def _compute_allocated(self) -> tuple[list[Extent], list[Extent]]:
        gb = self.grain_bytes
        span = gb * self.gtes
        # runs of each distinct table, in grain indexes: (data starts, ends, zero starts, ends)
        runs: dict[int, tuple[Ints, Ints, Ints, Ints]] = {}
        data, zeros = _Ranges(), _Ranges()
        for gi in np.flatnonzero(self.gd).tolist():
            sector = int(self.gd[gi])
            if sector not in runs:
                gt = self._tables[sector]
                zmask = (gt == GTE_ZEROED) if self.zeroed_grain else np.zeros(len(gt), bool)
                runs[sector] = (*_runs((gt > 0) & ~zmask), *_runs(zmask))
            ds, de, zs, ze = runs[sector]
            base = gi * span
            data.add(ds * gb + base, de * gb + base)
            zeros.add(zs * gb + base, ze * gb + base)
        cap = self.capacity
        # Too many data ranges are joined (over-covering is safe: absent grains read as zeros);
        # too many zeroed ranges are dropped (the parent's extents then over-cover, also safe).
        return data.extents(cap), (zeros.extents(cap) if zeros.count <= MAX_EXTENTS else [])

    def allocated_bytes(self) -> int:
        n = 0
        for gi in np.flatnonzero(self.gd).tolist():
            gt = self._tables[int(self.gd[gi])]
            n += int(np.count_nonzero(gt > GTE_ZEROED if self.zeroed_grain else gt > 0))
        return n * self.grain_bytes

    # -- reads ---------------------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview, absent: Absent) -> None:
        """Fill ``buf`` with the extent's bytes at ``offset``; ``absent`` fills unallocated
        grains (a parent, or zeros)."""
        gb = self.grain_bytes
        end = offset + len(buf)
        pending: list[tuple[int, int, memoryview]] = []  # compressed: (sector, skip, dest)
        pos = offset
        # a run of consecutive grains read the same way: (kind, start, file offset)
        run: tuple[str, int, int] | None = None

        def flush(upto: int) -> None:
            if run is None or upto <= run[1]:
                return
            kind, start, file_off = run
            dest = buf[start - offset : upto - offset]
            if kind == "absent":
                absent(start, dest)
            elif kind == "zero":
                zero_fill(dest)
            else:
                self.region.read_into(file_off, dest)

        while pos < end:
            grain = pos // gb
            gstart = grain * gb
            hi = min(end, gstart + gb)
            entry = self._entry(grain) if pos < self.capacity else 0
            if entry == 0:
                kind, file_off = "absent", 0
            elif entry == GTE_ZEROED and self.zeroed_grain:
                kind, file_off = "zero", 0
            elif self.compressed:
                flush(pos)
                run = None
                pending.append((entry, pos - gstart, buf[pos - offset : hi - offset]))
                pos = hi
                continue
            else:
                kind, file_off = "data", entry * SECTOR + (pos - gstart)
            if run is not None and run[0] == kind and (
                    kind != "data" or run[2] + (pos - run[1]) == file_off):
                pass  # continues the run
            else:
                flush(pos)
                run = (kind, pos, file_off)
            pos = hi
        flush(end)
        if pending:
            self._inflate_all(pending)

    def _inflate_all(self, pending: list[tuple[int, int, memoryview]]) -> None:
        gb = self.grain_bytes

        def one(item: tuple[int, int, memoryview]) -> None:
            sector, skip, dest = item
            # whole grains (convert, upload) skip the cache: it is for reads smaller than a grain
            grain = self._inflate(sector) if len(dest) == gb else self._grain(sector)
            dest[:] = memoryview(grain)[skip : skip + len(dest)]

        if POOL_WORKERS > 1 and len(pending) >= PARALLEL_MIN:
            for _ in _executor().map(one, pending):
                pass
        else:
            for item in pending:
                one(item)

    def _grain(self, sector: int) -> bytes:
        """The decompressed grain whose marker (or data) is at ``sector``."""
        with self._lock:
            hit = self._cache.get(sector)
            if hit is not None:
                self._cache.move_to_end(sector)
                return hit
        grain = self._inflate(sector)
        with self._lock:
            self._cache[sector] = grain
            if len(self._cache) > max(1, GRAIN_CACHE_BYTES // self.grain_bytes):
                self._cache.popitem(last=False)
        return grain

    def _inflate(self, sector: int) -> bytes:
        gb = self.grain_bytes
        off = sector * SECTOR
        limit = gb + gb // 8 + COMPRESSED_SLACK
        # One read for the marker and the data after it (at most ``limit`` bytes follow).
        head = self.region.pread(off, GRAIN_MARKER_SIZE + limit)
        packed: bytes | memoryview = head
        if self.markers:
            if len(head) < GRAIN_MARKER_SIZE:
                raise FormatError("grain marker", off, f"{self.region.name} ends inside the "
                                                       "marker of a compressed grain")
            size = int.from_bytes(head[8:12], "little")
            if size == 0 or size > limit:
                raise FormatError("grain marker.size", off + 8,
                                  f"{size} bytes of compressed data for a {gb}-byte grain")
            if GRAIN_MARKER_SIZE + size > len(head):
                raise FormatError("grain marker.size", off + 8,
                                  f"{size} bytes of compressed data run past the end of "
                                  f"{self.region.name} ({self.region.length} bytes)")
            packed = memoryview(head)[GRAIN_MARKER_SIZE : GRAIN_MARKER_SIZE + size]
        d = _INFLATE.decompressobj()
        try:
            out: bytes = d.decompress(packed, gb)
        except _INFLATE_ERRORS as exc:
            raise FormatError("grain", off, f"deflate data is corrupt ({exc})") from exc
        if d.unconsumed_tail and not d.eof:
            raise FormatError("grain", off, f"deflate data inflates to more than {gb} bytes")
        if not d.eof and self.markers:
            raise FormatError("grain", off, "deflate data ends early (truncated grain)")
        if len(out) < gb:
            out += bytes(gb - len(out))
        return out


class CowdExtent(SparseExtent):
    """An ESX "COWD" sparse extent (vmfsSparse snapshots): 512-byte grains by default, 4096
    entries per grain table, no compression, no zeroed grains, no redundant directory. Read as
    an extent of a vmfsSparse descriptor, whose parentFileNameHint names the parent."""

    FIELD_OFFSETS: ClassVar[Mapping[str, int]] = COWD_FIELD_OFFSETS
    GTES = 4096

    def __init__(self, region: Region) -> None:
        self.region = region
        self.header_offset = 0
        raw = region.read_exact(0, COWD_HEADER.sizeof(), "COWD header")
        h = COWD_HEADER.parse(raw)
        if h.magic != COWD_MAGIC:
            raise FormatError("header.magic", 0, f"expected b'COWD', found {h.magic!r}")
        g = h.grain_size
        if g < 1 or g > MAX_GRAIN_SECTORS or g & (g - 1):
            raise FormatError("header.grain_size", self._field("grain_size"),
                              f"{g} sectors; a grain is a power of two up to "
                              f"{MAX_GRAIN_SECTORS} sectors")
        self.header = h
        self.version = int(h.version)
        self.flags = int(h.flags)
        self.grain_bytes = g * SECTOR
        self.gtes = self.GTES
        self.capacity = int(h.capacity) * SECTOR
        self.compressed = self.markers = self.zeroed_grain = False
        self.descriptor = None
        self.gd, self._tables = self._read_map(int(h.gd_offset), "gd_offset", int(h.gd_entries))
        self._init_caches()


Ints = np.ndarray


def _runs(mask: np.ndarray) -> tuple[Ints, Ints]:
    """(first, end) indexes of the True runs of ``mask``."""
    edges = np.flatnonzero(np.diff(mask.view(np.int8), prepend=0, append=0)).astype(np.int64)
    return edges[0::2], edges[1::2]


class _Ranges:
    """Byte ranges gathered as numpy arrays, kept under ``MAX_EXTENTS`` by coarsening."""

    def __init__(self) -> None:
        self.starts: list[Ints] = []
        self.ends: list[Ints] = []
        self.count = 0

    def add(self, starts: Ints, ends: Ints) -> None:
        if len(starts):
            self.starts.append(starts)
            self.ends.append(ends)
            self.count += len(starts)
            if self.count > 2 * MAX_EXTENTS:
                self._squeeze()

    def _squeeze(self) -> None:
        s, e = coarsen(np.concatenate(self.starts), np.concatenate(self.ends))
        self.starts, self.ends, self.count = [s], [e], len(s)

    def extents(self, limit: int) -> list[Extent]:
        if not self.starts:
            return []
        self._squeeze()
        s, e = self.starts[0], np.minimum(self.ends[0], limit)
        keep = s < e
        return [Extent(a, b - a) for a, b in zip(s[keep].tolist(), e[keep].tolist(), strict=True)]


def coarsen(starts: Ints, ends: Ints, limit: int = MAX_EXTENTS) -> tuple[Ints, Ints]:
    """Sorted, joined ranges, at most ``limit`` of them: grain tables alternating allocated and
    unallocated grains (or pointing many entries at one grain) would otherwise make millions of
    ranges, and as many Python objects. The gaps joined are the smallest that suffice; the
    result may over-cover, never under-cover."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    gap = 0
    while True:
        new = np.ones(len(s), dtype=bool)
        new[1:] = s[1:] > e[:-1] + gap  # True: starts a range of its own
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(s)) - 1
        s, e = s[first], e[last]
        if len(s) <= limit:
            return s, e
        gap = max(SECTOR, gap * 4)


