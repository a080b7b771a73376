"""VirtualBox VDI, fixed and dynamic: the header checked against the file, the block map as the
allocation map (blocks never written or marked zero are never read).

A differencing VDI (a snapshot layer) stores no path to its parent (VirtualBox keeps that in its
own registry), only the parent's UUID: it is read when the user names the parent (``--parent``)
and that parent's UUID is the one the child links to; otherwise it is refused with the way out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import construct as cs
import numpy as np

from ..errors import FormatError, ParentNotFound, UnsupportedDisk
from ..extents import Extent, merge, subtract
from .base import ReadsInto, VirtualDisk, pread_into, zero_fill
from .vdi_structs import (
    BLOCK_FREE,
    BLOCK_ZERO,
    HEADER,
    HEADER_FIELDS_END,
    HEADER_SIZE_BASE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    OFFSETS,
    SECTOR,
    SIGNATURE,
    TYPE_DIFF,
    TYPE_FIXED,
    TYPE_NAMES,
    TYPE_NORMAL,
    TYPE_UNDO,
)


def _bad(field: str, problem: str) -> FormatError:
    return FormatError(f"header.{field}", OFFSETS[field], problem)


class VdiDisk(ReadsInto):
    """A fixed or dynamic VDI. Takes ownership of ``fd``."""

    kind = "vdi"

    def __init__(self, path: str, fd: int, file_size: int) -> None:
        self.path = path
        self._fd = fd
        #: the disk a differencing VDI reads its never-written blocks from
        self.parent: VirtualDisk | None = None
        raw = os.pread(fd, HEADER_FIELDS_END, 0)
        if len(raw) < HEADER_FIELDS_END:
            raise FormatError("file", 0, f"truncated: {file_size} bytes, smaller than a VDI "
                                         f"header ({HEADER_FIELDS_END} bytes)")
        try:
            h = HEADER.parse(raw)
        except cs.ConstructError as exc:  # cannot happen on enough bytes; keep the family
            raise FormatError("header", 0, f"unparsable: {exc}") from exc
        self.header = h
        self._check_header(h, file_size, path)
        self._bs = int(h.block_size)
        self._size = int(h.disk_size)
        self._data = int(h.offset_data)
        self.bmap = self._read_bmap(h, file_size)

    # --- validation: every field against the others and the file size -------------------------

    @staticmethod
    def _check_header(h: Any, file_size: int, path: str) -> None:
        if h.signature != SIGNATURE:
            raise _bad("signature", f"expected 0x{SIGNATURE:08x}, found 0x{h.signature:08x}")
        major, minor = h.version >> 16, h.version & 0xFFFF
        if major != 1:
            raise _bad("version", f"version {major}.{minor}: vhdkit reads VDI 1.x headers")
        if h.header_size < HEADER_FIELDS_END - HEADER_SIZE_BASE:
            raise _bad("header_size", f"{h.header_size} bytes, smaller than the 1.1 header "
                                      f"({HEADER_FIELDS_END - HEADER_SIZE_BASE})")
        if HEADER_SIZE_BASE + h.header_size > min(file_size, h.offset_bmap):
            raise _bad("header_size", f"{h.header_size} bytes from offset {HEADER_SIZE_BASE} "
                                      f"overlap the block map at {h.offset_bmap} or pass the "
                                      f"end of the file ({file_size} bytes)")
        if h.image_type == TYPE_UNDO:
            raise UnsupportedDisk(
                f"{path}: an undo VDI (a VirtualBox snapshot layer), which vhdkit does not "
                "read: merge the chain first (VBoxManage clonemedium SNAPSHOT.vdi merged.vdi), "
                "then give vhdkit the merged image")
        if h.image_type not in (TYPE_NORMAL, TYPE_FIXED, TYPE_DIFF):
            raise _bad("image_type", f"unknown image type {h.image_type} (1 dynamic, 2 fixed, "
                                     "3 undo, 4 differencing)")
        if h.sector_size != SECTOR:
            raise _bad("sector_size", f"{h.sector_size}: only {SECTOR}-byte sectors exist")
        bs = h.block_size
        if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs & (bs - 1):
            raise _bad("block_size", f"{bs} is not a power of two between {MIN_BLOCK_SIZE} and "
                                     f"{MAX_BLOCK_SIZE}")
        if h.block_extra != 0:
            raise UnsupportedDisk(
                f"{path}: header.block_extra at offset {OFFSETS['block_extra']}: "
                f"{h.block_extra} bytes of per-block extra data, which vhdkit does not read "
                "(qemu-img neither); VBoxManage clonemedium DISK copy.vdi writes an image "
                "without them")
        if h.disk_size == 0:
            raise _bad("disk_size", "0 bytes: an empty disk")
        if h.disk_size % SECTOR:
            raise _bad("disk_size", f"{h.disk_size} is not a whole number of {SECTOR}-byte "
                                    "sectors")
        blocks = -(-h.disk_size // bs)
        if h.blocks_in_image != blocks:
            raise _bad("blocks_in_image", f"{h.blocks_in_image} blocks, but a disk of "
                                          f"{h.disk_size} bytes in {bs}-byte blocks has {blocks}")
        if h.blocks_allocated > h.blocks_in_image:
            raise _bad("blocks_allocated", f"{h.blocks_allocated} allocated of only "
                                           f"{h.blocks_in_image} blocks")
        bmap_end = h.offset_bmap + 4 * h.blocks_in_image
        if bmap_end > file_size:
            raise _bad("offset_bmap", f"a block map of {h.blocks_in_image} entries at "
                                      f"{h.offset_bmap} ends at {bmap_end}, past the end of the "
                                      f"file ({file_size} bytes)")
        if bmap_end > h.offset_data:
            raise _bad("offset_data", f"data area at {h.offset_data} overlaps the block map "
                                      f"({h.offset_bmap}..{bmap_end})")
        if h.offset_data > file_size:
            raise _bad("offset_data", f"{h.offset_data} is past the end of the file "
                                      f"({file_size} bytes)")

    def _read_bmap(self, h: Any, file_size: int) -> np.ndarray[Any, np.dtype[np.uint32]]:
        """The block map, every allocated entry checked: inside the file, used once."""
        n = int(h.blocks_in_image)
        raw = os.pread(self._fd, 4 * n, int(h.offset_bmap))  # bounded: checked against the file
        bmap = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
        used = np.flatnonzero(bmap < BLOCK_ZERO)
        if used.size == 0:
            return bmap
        phys = bmap[used].astype(np.int64)
        ends = self._data + (phys + 1) * self._bs
        past = np.flatnonzero(ends > file_size)
        if past.size:
            i = int(used[past[0]])
            raise FormatError(f"bmap[{i}]", int(h.offset_bmap) + 4 * i,
                              f"block {int(bmap[i])} lies at {self._data + int(bmap[i]) * self._bs}"
                              f", past the end of the file ({file_size} bytes)")
        order = np.argsort(phys, kind="stable")
        dup = np.flatnonzero(phys[order][1:] == phys[order][:-1])
        if dup.size:
            first, again = int(used[order[dup[0]]]), int(used[order[dup[0] + 1]])
            raise FormatError(f"bmap[{again}]", int(h.offset_bmap) + 4 * again,
                              f"data block {int(bmap[again])} is already used by entry {first}")
        return bmap

    # --- the VirtualDisk view -------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def subformat(self) -> str:
        return TYPE_NAMES[int(self.header.image_type)]

    @property
    def uuid(self) -> bytes:
        return bytes(self.header.uuid_image)

    @property
    def link(self) -> bytes:
        """The UUID of the parent a differencing VDI reads through."""
        return bytes(self.header.uuid_link)

    def chain(self) -> list[VirtualDisk]:
        return [self, *(self.parent.chain() if self.parent is not None else [])]

    def allocated_blocks(self) -> int:
        return int(np.count_nonzero(self.bmap < BLOCK_ZERO))

    def facts(self) -> dict[str, Any]:
        h = self.header
        allocated = self.allocated_blocks()
        return {
            "format": "vdi",
            "subformat": self.subformat,
            "version": f"{h.version >> 16}.{h.version & 0xFFFF}",
            "block_size": self._bs,
            "blocks": int(h.blocks_in_image),
            "allocated_blocks": allocated,
            "zero_blocks": int(np.count_nonzero(self.bmap == BLOCK_ZERO)),
            "allocated_bytes": allocated * self._bs,
            "uuid": str(uuid.UUID(bytes_le=bytes(h.uuid_image))),
            **({"parent_uuid": str(uuid.UUID(bytes_le=self.link))}
               if self.subformat == "differencing" else {}),
        }

    def extents(self) -> list[Extent]:
        own = self._own_extents()
        if self.parent is None:
            return own
        # never-written blocks read through to the parent; blocks marked zero do not
        covered = self._runs(np.flatnonzero(self.bmap != BLOCK_FREE))
        theirs = [Extent(e.start, min(e.end, self._size) - e.start)
                  for e in self.parent.extents() if e.start < self._size]
        return merge(own + subtract(theirs, covered))

    def _own_extents(self) -> list[Extent]:
        return self._runs(np.flatnonzero(self.bmap < BLOCK_ZERO))

    def _runs(self, used: np.ndarray[Any, np.dtype[np.intp]]) -> list[Extent]:
        """Byte ranges of the given (sorted) block indexes, consecutive blocks merged."""
        if used.size == 0:
            return []
        # runs of consecutive allocated blocks
        breaks = np.flatnonzero(np.diff(used) != 1)
        starts = np.concatenate(([used[0]], used[breaks + 1]))
        ends = np.concatenate((used[breaks], [used[-1]])) + 1
        out = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            lo, hi = s * self._bs, min(e * self._bs, self._size)
            if hi > lo:
                out.append(Extent(lo, hi - lo))
        return out

    def read_into(self, offset: int, buf: memoryview) -> None:
        n = max(0, min(len(buf), self._size - offset))
        zero_fill(buf[n:])
        bs, bmap = self._bs, self.bmap
        pos = 0
        while pos < n:
            block, within = divmod(offset + pos, bs)
            entry = int(bmap[block])
            take = min(bs - within, n - pos)
            if entry == BLOCK_FREE and self.parent is not None:
                part = buf[pos : pos + take]
                self.parent.read_into(offset + pos, part)
            elif entry >= BLOCK_ZERO:
                zero_fill(buf[pos : pos + take])
            else:
                # extend over blocks that follow each other in the file too: one read
                nxt = block + 1
                while pos + take < n and int(bmap[nxt]) == entry + (nxt - block):
                    take = min(take + bs, n - pos)
                    nxt += 1
                pread_into(self._fd, buf[pos : pos + take], self._data + entry * bs + within)
            pos += take

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.parent is not None:
            self.parent.close()
            self.parent = None


#: Opens the next disk of a chain (formats/opener.py: depth limit, loops, file identity).
OpenParent = Callable[[str], VirtualDisk]


def open_vdi_disk(path: str, fd: int, file_size: int, parent: str | None = None,
                  open_parent: OpenParent | None = None) -> VdiDisk:
    """A VDI; owns ``fd`` from the call on (closed when this fails). ``parent`` names the
    parent of a differencing VDI (checked by UUID)."""
    try:
        disk = VdiDisk(path, fd, file_size)
    except BaseException:
        os.close(fd)
        raise
    if disk.subformat != "differencing":
        return disk
    try:
        if parent is None or open_parent is None:
            raise UnsupportedDisk(
                f"{path}: a differencing VDI (a VirtualBox snapshot layer): it records only its "
                f"parent's UUID {uuid.UUID(bytes_le=disk.link)}, not where the parent is; give "
                "the parent with --parent PATH, or merge the chain first (VBoxManage "
                "clonemedium SNAPSHOT.vdi merged.vdi)")
        disk.parent = _linked_parent(disk, parent, open_parent)
    except BaseException:
        disk.close()
        raise
    return disk


def _linked_parent(child: VdiDisk, path: str, open_parent: OpenParent) -> VirtualDisk:
    par = open_parent(path)
    got = par.uuid if isinstance(par, VdiDisk) else None
    if got != child.link:
        shown = "a VDI with UUID " + str(uuid.UUID(bytes_le=got)) if got else f"a {par.kind}"
        par.close()
        raise ParentNotFound(f"{child.path}: parent {path} is {shown}; the child links to "
                             f"{uuid.UUID(bytes_le=child.link)}")
    return par
