"""The allocation map of a dynamic VHD from its BAT and sector bitmaps, vectorised.

A hostile (or just odd) image may have millions of tiny blocks: 512-byte blocks, every BAT entry
allocated. Reading one bitmap per ``pread`` and building one Python object per block would take
minutes and gigabytes, so the bitmaps are read in few large reads (blocks sorted by file offset,
neighbours within ``GAP`` bytes read together, at most ``WINDOW`` bytes at a time), decoded with
numpy in bounded batches, and the present-sector runs of adjacent blocks joined before any Python
object is made. Cost: one pass over the file's bitmap area, memory bounded by ``WINDOW`` plus
the merged result.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from ..extents import SECTOR, Extent
from .raw import data_extents
from .vhd_structs import BAT_UNUSED

#: Largest single read of the bitmap area.
WINDOW = 8 << 20
#: Blocks whose bitmaps are at most this far apart are read in one go (else one read each).
GAP = 64 << 10
#: extents() returns at most this many ranges (see _coarsen).
MAX_EXTENTS = 1 << 18
#: BAT entries handled at a time (bounds the index arrays: about 40 bytes per entry).
ENTRIES_PER_SLICE = 1 << 19
#: At most this many bitmap bits are decoded at once.
BITS_PER_BATCH = 1 << 22

Ints = np.ndarray[Any, np.dtype[np.int64]]


def present_extents(fd: int, bat: np.ndarray[Any, np.dtype[np.uint32]], block_size: int,
                    size: int) -> list[Extent]:
    """Sorted, merged byte ranges of the virtual disk whose sectors are marked present."""
    spb = block_size // SECTOR
    nbytes = -(-spb // 8)
    regions = _file_data(fd)
    starts: list[Ints] = [np.zeros(0, dtype=np.int64)]
    ends: list[Ints] = [np.zeros(0, dtype=np.int64)]
    rows = max(1, min(1 << 20, BITS_PER_BATCH // spb))
    # A slice of the BAT at a time bounds memory; the runs are joined across slices below.
    for first in range(0, len(bat), ENTRIES_PER_SLICE):
        part = bat[first: first + ENTRIES_PER_SLICE]
        blocks = np.flatnonzero(part != BAT_UNUSED) + first
        if blocks.size == 0:
            continue
        offs = bat[blocks].astype(np.int64) * SECTOR
        order = np.argsort(offs, kind="stable")
        blocks, offs = blocks[order], offs[order]
        del order
        blocks, offs = _in_regions(regions, blocks, offs, nbytes)
        for lo, hi in _groups(offs, nbytes):
            for a in range(lo, hi, rows):
                b = min(hi, a + rows)
                bits = _read_bits(fd, offs[a:b], nbytes, spb)
                s, e = _runs(bits, blocks[a:b], block_size)
                s, e = _join(s, e)
                starts.append(s)
                ends.append(e)
    s, e = np.concatenate(starts), np.concatenate(ends)
    order = np.argsort(s, kind="stable")
    s, e = _join(s[order], e[order])
    s, e = _coarsen(s, e)
    # A damaged footer may claim up to 2^64 bytes; the BAT addresses far less than 2^63.
    np.minimum(e, min(size, np.iinfo(np.int64).max), out=e)
    keep = s < e
    return [Extent(a, b - a) for a, b in zip(s[keep].tolist(), e[keep].tolist(), strict=True)]


def _file_data(fd: int) -> tuple[Ints, Ints] | None:
    """Starts and ends of the file's data regions; None when the file has no holes (or the
    file system cannot say)."""
    limit = os.lseek(fd, 0, os.SEEK_END)  # a block device too (its st_size is 0)
    regions = data_extents(fd, limit)
    if len(regions) == 1 and regions[0] == Extent(0, limit):
        return None
    return (np.array([r.start for r in regions], dtype=np.int64),
            np.array([r.end for r in regions], dtype=np.int64))


def _in_regions(regions: tuple[Ints, Ints] | None, blocks: Ints, offs: Ints,
                nbytes: int) -> tuple[Ints, Ints]:
    """Only the blocks whose bitmap lies (partly) in a data region of the file: a bitmap in a
    hole reads as zeros (nothing present), and reading holes costs as much as reading data."""
    if regions is None:
        return blocks, offs
    rs, re_ = regions
    i = np.searchsorted(re_, offs, side="right")  # first region ending after the bitmap start
    keep = np.zeros(offs.size, dtype=bool)
    ok = i < rs.size
    keep[ok] = rs[i[ok]] < offs[ok] + nbytes
    return blocks[keep], offs[keep]


def _groups(offs: Ints, nbytes: int) -> list[tuple[int, int]]:
    """Index ranges of ``offs`` (sorted) read with one ``pread`` each."""
    breaks = np.flatnonzero(np.diff(offs) > GAP) + 1
    out: list[tuple[int, int]] = []
    bounds = [0, *breaks.tolist(), len(offs)]
    for lo, hi in itertools.pairwise(bounds):
        while lo < hi:  # split a dense stretch into windows
            stop = int(np.searchsorted(offs, offs[lo] + WINDOW - nbytes, side="right"))
            stop = min(hi, max(stop, lo + 1))
            out.append((lo, stop))
            lo = stop
    return out


def _read_bits(fd: int, offs: Ints, nbytes: int, spb: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The first ``spb`` bitmap bits of each block whose bitmap starts at ``offs`` (one row per
    block; most significant bit first). Bytes past the end of the file read as zero."""
    base = int(offs[0])
    span = int(offs[-1]) - base + nbytes
    raw = os.pread(fd, span, base)
    buf = np.zeros(span, dtype=np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    if nbytes == 1:  # blocks of at most 8 sectors: one byte each, no 2-D index
        return np.unpackbits(buf[offs - base][:, None], axis=1)[:, :spb]
    index = (offs - base)[:, None] + np.arange(nbytes, dtype=np.int64)[None, :]
    return np.unpackbits(buf[index], axis=1)[:, :spb]


def _runs(bits: np.ndarray[Any, np.dtype[np.uint8]], blocks: Ints,
          block_size: int) -> tuple[Ints, Ints]:
    """Byte ranges ``[start, end)`` of the runs of set bits, row by row."""
    if bits.all():
        base = blocks * block_size
        return base, base + block_size
    padded = np.zeros((bits.shape[0], bits.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = bits
    edges = np.diff(padded, axis=1)
    r_on, c_on = np.nonzero(edges == 1)
    r_off, c_off = np.nonzero(edges == -1)
    base = blocks * block_size
    return (base[r_on] + c_on.astype(np.int64) * SECTOR,
            base[r_off] + c_off.astype(np.int64) * SECTOR)


def _coarsen(s: Ints, e: Ints) -> tuple[Ints, Ints]:
    """At most ``MAX_EXTENTS`` ranges: bitmaps alternating present and absent sectors would
    otherwise make millions of tiny ranges (and as many Python objects). The gaps joined are
    the smallest that suffice; extents() may over-cover (absent sectors read as zeros, and
    convert and upload skip zeros by content), never under-cover."""
    gap = SECTOR
    while s.size > MAX_EXTENTS:
        join = np.ones(s.size, dtype=bool)
        join[1:] = s[1:] - e[:-1] > gap  # True: starts a new range
        first = np.flatnonzero(join)
        last = np.append(first[1:], s.size) - 1
        s, e = s[first], e[last]
        gap *= 4
    return s, e


def _join(s: Ints, e: Ints) -> tuple[Ints, Ints]:
    """Join ranges sorted by start that touch or overlap."""
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], s.size) - 1
    return s[first], reach[last]


def sector_sources(fd: int, bat: np.ndarray[Any, np.dtype[np.uint32]], block_size: int,
                   bitmap_size: int, first: int, count: int) -> Ints:
    """For virtual sectors ``first .. first + count``: the file offset holding each one, or -1
    where the child has no data (unallocated block or bit clear). Bitmaps are read like
    ``present_extents`` does: few reads, however small the blocks."""
    spb = block_size // SECTOR
    nbytes = -(-spb // 8)
    b0, b1 = first // spb, -(-(first + count) // spb)
    out = np.full((b1 - b0) * spb, -1, dtype=np.int64)
    blocks = np.arange(b0, min(b1, len(bat)), dtype=np.int64)
    entries = bat[blocks]
    blocks = blocks[entries != BAT_UNUSED]
    if blocks.size:
        offs = bat[blocks].astype(np.int64) * SECTOR
        order = np.argsort(offs, kind="stable")
        blocks, offs = blocks[order], offs[order]
        rows = max(1, min(1 << 20, BITS_PER_BATCH // spb))
        sector = np.arange(spb, dtype=np.int64) * SECTOR
        for lo, hi in _groups(offs, nbytes):
            for a in range(lo, hi, rows):
                b = min(hi, a + rows)
                bits = _read_bits(fd, offs[a:b], nbytes, spb).astype(bool)
                src = offs[a:b, None] + bitmap_size + sector[None, :]
                view = out.reshape(-1, spb)[blocks[a:b] - b0]
                view[bits] = src[bits]
                out.reshape(-1, spb)[blocks[a:b] - b0] = view
    skip = first - b0 * spb
    return out[skip: skip + count]
