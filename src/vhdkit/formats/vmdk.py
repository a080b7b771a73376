"""VMDK disks: a sparse extent with an embedded descriptor (monolithicSparse, streamOptimized),
or a text descriptor naming extent files (twoGbMaxExtent*, monolithicFlat, vmfs, vmfsThin),
with an optional parent chain (parentFileNameHint, checked by CID).

The allocation map is vhdkit's own: grain tables of sparse extents, SEEK_DATA of flat ones,
nothing for zero extents. Unallocated grains read from the parent, or as zeros.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import FormatError, ParentNotFound, UnsupportedDisk
from ..extents import Extent, merge, subtract
from .base import ReadsInto, VirtualDisk, open_fd, zero_fill
from .region import Region
from .vmdk_descriptor import (
    FLAT_TYPES,
    MAX_DESCRIPTOR,
    Descriptor,
    parse_descriptor,
    refuse_create_type,
    refuse_extent,
)
from .vmdk_sparse import MAX_EXTENTS, CowdExtent, SparseExtent, coarsen
from .vmdk_structs import COWD_MAGIC, SECTOR, SPARSE_MAGIC


@dataclass
class Piece:
    """One extent of the virtual disk: ``[start, start + length)`` read from ``sparse``, from
    ``region`` at ``offset`` (flat), or as zeros."""

    start: int
    length: int
    type: str  # SPARSE, FLAT, VMFS, ZERO
    file: str | None
    sparse: SparseExtent | None = None
    region: Region | None = None
    offset: int = 0

    @property
    def end(self) -> int:
        return self.start + self.length


class VmdkDisk(ReadsInto):
    kind = "vmdk"

    def __init__(self, path: str, descriptor: Descriptor, pieces: list[Piece], fds: list[int],
                 parent: VirtualDisk | None = None) -> None:
        self.path = path
        self.descriptor = descriptor
        self.pieces = pieces
        self.parent = parent
        self._fds = fds
        self._starts = [p.start for p in pieces]
        self._size = pieces[-1].end if pieces else 0
        self._extents: list[Extent] | None = None
        self._extents_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def extent_files(self) -> tuple[str, ...]:
        """The files this disk's extents are read from, beside ``path``."""
        regions = [p.region if p.region is not None else
                   p.sparse.region if p.sparse is not None else None for p in self.pieces]
        return tuple(dict.fromkeys(r.name for r in regions
                                   if r is not None and r.name != self.path))

    def chain(self) -> list[VirtualDisk]:
        return [self, *(self.parent.chain() if self.parent is not None else [])]

    # -- allocation map ----------------------------------------------------------------------

    def extents(self) -> list[Extent]:
        with self._extents_lock:  # computed once: the tables do not change while open
            if self._extents is None:
                self._extents = self._compute_extents()
            return list(self._extents)

    def _compute_extents(self) -> list[Extent]:
        data: list[Extent] = []
        covered: list[Extent] = []  # ranges the parent cannot show through
        for p in self.pieces:
            if p.sparse is not None:
                d, z = p.sparse.allocated()
                data += [Extent(p.start + e.start, min(e.end, p.length) - e.start)
                         for e in d if e.start < p.length]
                covered += [Extent(p.start + e.start, e.length) for e in d + z]
            else:
                covered.append(Extent(p.start, p.length))
                if p.region is not None:
                    data += [Extent(p.start + e.start - p.offset, e.length)
                             for e in p.region.data_ranges(p.offset, p.length)]
        if self.parent is not None:
            data += subtract(self.parent.extents(), covered)
        size = self._size
        out = [Extent(e.start, min(e.end, size) - e.start) for e in merge(data) if e.start < size]
        if len(out) > MAX_EXTENTS:  # many extents (or a parent) each near the bound
            s, e = coarsen(np.array([x.start for x in out], dtype=np.int64),
                           np.array([x.end for x in out], dtype=np.int64))
            out = [Extent(a, b - a) for a, b in zip(s.tolist(), e.tolist(), strict=True)]
        return out

    def allocated_bytes(self) -> int:
        return sum(p.sparse.allocated_bytes() if p.sparse is not None else p.length
                   for p in self.pieces if p.type != "ZERO")

    # -- reads ---------------------------------------------------------------------------------

    def read_into(self, offset: int, buf: memoryview) -> None:
        limit = max(0, min(len(buf), self._size - offset))
        zero_fill(buf[limit:])
        pos, end = offset, offset + limit
        i = max(0, bisect.bisect_right(self._starts, pos) - 1)
        while pos < end:
            p = self.pieces[i]
            hi = min(end, p.end)
            dest = buf[pos - offset : hi - offset]
            if p.sparse is not None:
                p.sparse.read_into(pos - p.start, dest, self._absent_from(p.start))
            elif p.region is not None:
                p.region.read_into(p.offset + pos - p.start, dest)
            else:
                zero_fill(dest)
            pos = hi
            i += 1

    def _absent_from(self, base: int) -> Callable[[int, memoryview], None]:
        """Fills unallocated grains of the extent at ``base``: the parent's data, or zeros."""
        def fill(at: int, buf: memoryview) -> None:
            if self.parent is None:
                zero_fill(buf)
            else:
                self.parent.read_into(base + at, buf)
        return fill

    # -- facts -------------------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        d = self.descriptor
        sparse = next((p.sparse for p in self.pieces if p.sparse is not None), None)
        return {
            "format": "vmdk",
            "subformat": d.create_type,
            "version": sparse.version if sparse is not None else d.version,
            "grain_size": sparse.grain_bytes if sparse is not None else None,
            "compressed": bool(sparse is not None and sparse.compressed),
            "zeroed_grains": bool(sparse is not None and sparse.zeroed_grain),
            "allocated_bytes": self.allocated_bytes(),
            "extents": [{"type": p.type, "file": p.file, "size": p.length,
                         **({"offset": p.offset} if p.region is not None else {})}
                        for p in self.pieces],
            "cid": f"{d.cid:08x}" if d.cid is not None else None,
            "parent_cid": f"{d.parent_cid:08x}",
            "parent_hint": d.parent_hint,
            "parent": self.parent.path if self.parent is not None else None,
            "adapter_type": d.ddb.get("adapterType"),
            "hw_version": d.ddb.get("virtualHWVersion"),
        }

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self.parent is not None:
            self.parent.close()
            self.parent = None


# -- opening --------------------------------------------------------------------------------

class ChainOpener(Protocol):
    """What opening a VMDK needs from formats/opener.py's ChainContext."""

    def resolve(self, child: str, reference: str) -> str: ...

    def open_parent(self, path: str, fmt: str | None = None) -> VirtualDisk: ...


def open_vmdk(path: str, fd: int, size: int, parent: str | None, ctx: ChainOpener) -> VmdkDisk:
    """A VMDK (sparse extent or text descriptor) with its chain; owns ``fd`` from the call on."""
    fds = [fd]
    disk: VmdkDisk | None = None
    try:
        disk = _open_top(path, Region(fd, 0, size, path), ctx, fds)
        disk.parent = _parent(disk, parent, ctx)
        return disk
    except BaseException:
        for f in fds:
            os.close(f)
        raise


def open_sparse_region(region: Region, label: str) -> VmdkDisk:
    """A VMDK made of one sparse extent inside ``region`` (a tar member of an OVA). The caller
    owns the region's fd; a disk that needs other files or a parent is refused."""
    head = region.pread(0, 4)
    if head != SPARSE_MAGIC:
        raise UnsupportedDisk(f"{label}: not a sparse VMDK extent (found {head!r}); vhdkit reads "
                              "OVA disks that are streamOptimized or monolithicSparse VMDKs")
    sparse = SparseExtent(region)
    desc = sparse.descriptor or Descriptor()
    refuse_create_type(desc, label)
    if desc.has_parent:
        raise UnsupportedDisk(f"{label}: a VMDK with a parent (parentCID {desc.parent_cid:08x}) "
                              "inside an OVA; vhdkit reads only complete disks there")
    piece = Piece(0, sparse.capacity, "SPARSE", label, sparse=sparse)
    return VmdkDisk(label, desc, [piece], [])


def _open_top(path: str, region: Region, ctx: ChainOpener, fds: list[int]) -> VmdkDisk:
    head = region.pread(0, 4)
    if head == COWD_MAGIC:
        raise UnsupportedDisk(f"{path}: a COWD sparse extent (ESX vmfsSparse snapshot) on its "
                              "own; open the descriptor (.vmdk) that names it, which says "
                              "where its parent is")
    if head == SPARSE_MAGIC:
        sparse = SparseExtent(region)
        desc = sparse.descriptor or Descriptor()
        refuse_create_type(desc, path)
        return VmdkDisk(path, desc, [Piece(0, sparse.capacity, "SPARSE",
                                           os.path.basename(path), sparse=sparse)], fds)
    if region.length > MAX_DESCRIPTOR:
        raise FormatError("descriptor", 0, f"a {region.length}-byte file is neither a sparse "
                                           "extent nor a VMDK descriptor")
    desc = parse_descriptor(region.pread(0, region.length))
    refuse_create_type(desc, path)
    if not desc.extents:
        raise FormatError("descriptor.extents", 0, "the descriptor names no extents")
    pieces: list[Piece] = []
    opened: dict[str, tuple[int, int]] = {}
    # one reader per sparse file, however many extent lines name it (its tables are read once)
    sparse_of: dict[str, SparseExtent] = {}
    start = 0
    for line in desc.extents:
        refuse_extent(line, path)
        length = line.sectors * SECTOR
        if line.type == "ZERO":
            pieces.append(Piece(start, length, "ZERO", None))
            start += length
            continue
        if not line.file:
            raise FormatError("descriptor.extent", line.at, f"a {line.type} extent names no file")
        target = ctx.resolve(path, line.file)
        if target not in opened:
            efd, esize = open_fd(target)
            fds.append(efd)
            opened[target] = (efd, esize)
        efd, esize = opened[target]
        ereg = Region(efd, 0, esize, target)
        if line.type in FLAT_TYPES:
            need = (line.offset + line.sectors) * SECTOR
            if need > esize:
                raise FormatError(f"descriptor.extent {line.file!r}", line.at,
                                  f"needs {need} bytes of its file, which has {esize}")
            pieces.append(Piece(start, length, line.type, line.file, region=ereg,
                                offset=line.offset * SECTOR))
        else:
            magic = ereg.pread(0, 4)
            if magic not in (SPARSE_MAGIC, COWD_MAGIC):
                raise FormatError(f"extent {line.file!r}.magic", 0,
                                  f"expected b'KDMV' or b'COWD' (a sparse extent), found "
                                  f"{magic!r}")
            if target not in sparse_of:
                sparse_of[target] = (CowdExtent if magic == COWD_MAGIC else SparseExtent)(ereg)
            pieces.append(Piece(start, length, line.type, line.file, sparse=sparse_of[target]))
        start += length
    return VmdkDisk(path, desc, pieces, fds)


def _find_parent(child: str, hint: str, ctx: ChainOpener) -> str:
    """The parent file a hint names: as written (relative to the child), then by its name beside
    the child (VMware on Windows writes ``C:\\VMs\\base.vmdk``). Both stay inside the child's
    directory tree (``ctx.resolve``)."""
    text = hint.replace("\\", "/")
    tried: list[str] = []
    outside: ParentNotFound | None = None
    for ref in dict.fromkeys([text, posixpath.basename(text)]):
        try:
            path = ctx.resolve(child, ref)
        except ParentNotFound as exc:
            outside = outside or exc
            continue
        if os.path.isfile(path):
            return path
        tried.append(path)
    if outside is not None:
        raise outside
    raise ParentNotFound(f"{child}: parent disk {hint!r} not found (looked for "
                         f"{', '.join(tried)}); give it with --parent PATH")


def _parent(disk: VmdkDisk, parent: str | None, ctx: ChainOpener) -> VirtualDisk | None:
    d = disk.descriptor
    if not d.has_parent:
        return None
    if parent is None:
        if not d.parent_hint:
            raise ParentNotFound(f"{disk.path}: has a parent (parentCID {d.parent_cid:08x}) but "
                                 "no parentFileNameHint; give it with --parent PATH")
        found = _find_parent(disk.path, d.parent_hint, ctx)
    else:
        found = parent
    par: VirtualDisk = ctx.open_parent(found)
    if not isinstance(par, VmdkDisk):
        par.close()
        raise ParentNotFound(f"{disk.path}: parent {found} is a {par.kind} disk, not a VMDK")
    if par.descriptor.cid != d.parent_cid:
        got = "no CID" if par.descriptor.cid is None else f"CID {par.descriptor.cid:08x}"
        par.close()
        raise ParentNotFound(f"{disk.path}: expects a parent with CID {d.parent_cid:08x}, but "
                             f"{found} has {got} (the parent changed after the child was made, "
                             "or it is another disk)")
    return par
