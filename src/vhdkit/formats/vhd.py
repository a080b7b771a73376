"""VHD readers: fixed (a raw data area), dynamic and differencing (BAT and sector bitmaps)."""

from __future__ import annotations

import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DiskIOError, FormatError, ParentNotFound, UnsupportedDisk
from ..extents import SECTOR, Extent, merge
from .base import ReadsInto, VirtualDisk, pread_into, zero_fill
from .raw import RawDisk
from .vhd_image import Anomaly, VhdImage, open_vhd
from .vhd_structs import BAT_UNUSED, HEADER_OFFSETS, DiskType, Footer

if TYPE_CHECKING:
    pass

_BITMAP_CACHE = 256
#: A sector-aligned request spanning at least this many blocks is read through a sector map.
_SMALL_BLOCKS = 8


class FixedVhdDisk(RawDisk):
    kind = "vhd-fixed"

    def __init__(self, image: VhdImage) -> None:
        super().__init__(image.path, image.fd, image.size, image.data_end)
        self.image = image

    def facts(self) -> dict[str, Any]:
        return {"format": "vhd", "subformat": "fixed"}

    def close(self) -> None:
        self.image.close()
        self._fd = -1


class DynamicVhdDisk(ReadsInto):
    """Dynamic and differencing VHDs. A differencing disk reads absent sectors from its parent."""

    def __init__(self, image: VhdImage, parent: VirtualDisk | None = None) -> None:
        assert image.header is not None and image.bat is not None
        self.image = image
        self.path = image.path
        self.parent = parent
        diff = image.disk_type == DiskType.DIFFERENCING
        self.kind = "vhd-differencing" if diff else "vhd-dynamic"
        self._bs = image.header.block_size
        self._spb = self._bs // SECTOR
        self._bat = image.bat
        self._bitmap_size = image.bitmap_size
        self._runs: OrderedDict[int, list[tuple[int, int]]] = OrderedDict()
        self._runs_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.image.size

    @property
    def block_size(self) -> int:
        return self._bs

    def chain(self) -> list[VirtualDisk]:
        return [self, *(self.parent.chain() if self.parent is not None else [])]

    def facts(self) -> dict[str, Any]:
        return {"format": "vhd", "subformat": self.kind.removeprefix("vhd-"),
                "allocated_bytes": self.allocated_blocks() * self._bs}

    def _present(self, block: int) -> list[tuple[int, int]]:
        """Sector runs ``(first, end)`` of a block marked present in its bitmap; [] if unallocated.

        Bit order is most-significant first (sector 0 is bit 7 of byte 0). Cached per block.
        """
        import numpy as np  # loaded on first use: a fixed VHD never needs it

        if block >= len(self._bat) or self._bat[block] == BAT_UNUSED:
            return []
        with self._runs_lock:  # readers on several threads share the cache
            cached = self._runs.get(block)
            if cached is not None:
                self._runs.move_to_end(block)
                return cached
        raw = os.pread(self.image.fd, self._bitmap_size, int(self._bat[block]) * SECTOR)
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: self._spb]
        if bits.all():
            runs = [(0, self._spb)]
        else:
            edges = np.flatnonzero(np.diff(bits.view(np.int8), prepend=0, append=0))
            runs = list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))
        with self._runs_lock:
            self._runs[block] = runs
            if len(self._runs) > _BITMAP_CACHE:
                self._runs.popitem(last=False)
        return runs

    def allocated_blocks(self) -> int:
        import numpy as np  # loaded on first use: a fixed VHD never needs it

        return int(np.count_nonzero(self._bat != BAT_UNUSED))

    def extents(self) -> list[Extent]:
        from .vhd_bitmaps import present_extents  # numpy: loaded on first use

        # Vectorised over the BAT and bitmaps: millions of tiny blocks cost seconds, not minutes.
        out = present_extents(self.image.fd, self._bat, self._bs, self.size)
        if self.parent is None:
            return out  # already sorted, merged and clipped
        out.extend(self.parent.extents())
        size = self.size
        return [Extent(e.start, min(e.end, size) - e.start) for e in merge(out) if e.start < size]

    def read_into(self, offset: int, buf: memoryview) -> None:
        length = len(buf)
        limit = max(0, min(length, self.size - offset))
        zero_fill(buf[limit:])
        if offset % SECTOR == 0 and limit % SECTOR == 0 and limit >= _SMALL_BLOCKS * self._bs:
            self._read_many_blocks(offset, buf[:limit])
            return
        end = offset + limit
        pos = offset
        while pos < end:
            block = pos // self._bs
            bstart = block * self._bs
            hi = min(end, bstart + self._bs)
            cursor = pos  # next byte not yet filled from the child
            for s, e in self._present(block):
                rs, re = max(pos, bstart + s * SECTOR), min(hi, bstart + e * SECTOR)
                if rs >= re:
                    continue
                if cursor < rs:
                    self._fill_parent(buf, offset, cursor, rs)
                src = int(self._bat[block]) * SECTOR + self._bitmap_size + (rs - bstart)
                pread_into(self.image.fd, buf[rs - offset : re - offset], src)
                cursor = re
            if cursor < hi:
                self._fill_parent(buf, offset, cursor, hi)
            pos = hi

    def _read_many_blocks(self, offset: int, buf: memoryview) -> None:
        """A request spanning many (small) blocks: one map of where each sector comes from,
        then one read per run of consecutive file sectors (or one read of the whole span when
        the runs lie close together), instead of a loop over blocks."""
        import numpy as np  # loaded on first use: a fixed VHD never needs it

        from .vhd_bitmaps import sector_sources

        src = sector_sources(self.image.fd, self._bat, self._bs, self._bitmap_size,
                             offset // SECTOR, len(buf) // SECTOR)
        have = src >= 0
        # Runs of sectors read from one place: both present and contiguous in the file, or
        # both absent.
        brk = np.flatnonzero((have[1:] != have[:-1])
                             | (have[1:] & (src[1:] != src[:-1] + SECTOR))) + 1
        starts = np.concatenate(([0], brk))
        ends = np.append(brk, src.size)
        present = have[starts]
        if present.any():
            lo = int(src[have].min())
            hi = int(src[have].max()) + SECTOR
            if hi - lo <= 2 * int(have.sum()) * SECTOR + (1 << 20):  # close together: one read
                span = bytearray(hi - lo)
                pread_into(self.image.fd, memoryview(span), lo)
                dst = np.frombuffer(buf, dtype=np.uint8).reshape(-1, SECTOR)
                got = np.frombuffer(span, dtype=np.uint8).reshape(-1, SECTOR)
                dst[have] = got[(src[have] - lo) // SECTOR]
                keep = ~present  # the present runs are done
                starts, ends, present = starts[keep], ends[keep], present[keep]
        for s, e, p in zip(starts.tolist(), ends.tolist(), present.tolist(), strict=True):
            if p:
                pread_into(self.image.fd, buf[s * SECTOR: e * SECTOR], int(src[s]))
            else:
                self._fill_parent(buf, offset, offset + s * SECTOR, offset + e * SECTOR)

    def _fill_parent(self, buf: memoryview, base: int, start: int, end: int) -> None:
        part = buf[start - base : end - base]
        if self.parent is None:
            zero_fill(part)  # absent sectors of a dynamic disk read as zeros
        else:
            self.parent.read_into(start, part)

    def close(self) -> None:
        self.image.close()
        if self.parent is not None:
            self.parent.close()


#: Opens a parent disk by path (the chain opener of formats/opener.py: depth, loops).
OpenParent = Callable[[str], VirtualDisk]
#: Turns a reference stored in the child into a path; refuses one leaving the child's tree.
Resolve = Callable[[str, str], str]


def open_vhd_disk(path: str, fd: int, size: int, *, parent: str | None, strict: bool,
                  open_parent: OpenParent, resolve: Resolve) -> VirtualDisk:
    """A VHD of any type; takes ownership of ``fd`` (closed when this fails)."""
    try:
        image = open_vhd(path, fd, size, strict=strict)
    except BaseException:
        os.close(fd)
        raise
    if image.disk_type == DiskType.FIXED:
        return FixedVhdDisk(image)
    try:
        par = None
        if image.disk_type == DiskType.DIFFERENCING:
            par = _open_parent(image, parent, open_parent, resolve)
        return DynamicVhdDisk(image, par)
    except BaseException:
        image.close()
        raise


@dataclass(frozen=True)
class ParentReference:
    """A place the child names its parent: a locator's path or the header's parent name."""

    text: str
    field: str
    offset: int


def parent_references(image: VhdImage) -> list[ParentReference]:
    """Where the parent may be, as stored in the child: locators (relative first, each also by
    its bare name beside the child), then the header's parent name beside the child."""
    assert image.header is not None
    out: list[ParentReference] = []
    order = {"W2ru": 0, "Wi2r": 1, "W2ku": 2, "Wi2k": 3, "MacX": 4, "Mac ": 5}
    loc_base = image.header_offset + HEADER_OFFSETS["parent_locators"]
    for loc in sorted(image.locators, key=lambda x: order.get(x.platform_code, 9)):
        text = loc.path.replace("\\", "/")
        where = (f"header.parent_locators[{loc.index}]", loc_base + 24 * loc.index)
        if text:
            out.append(ParentReference(text, *where))
            # An absolute Windows path ("C:/disks/parent.vhd") rarely exists here; try its name.
            if os.path.basename(text) not in ("", text):
                out.append(ParentReference(os.path.basename(text), *where))
    name = os.path.basename(image.header.parent_name_text.replace("\\", "/"))
    if name:
        out.append(ParentReference(name, "header.parent_name",
                                   image.header_offset + HEADER_OFFSETS["parent_name"]))
    return out


def _open_parent(image: VhdImage, parent: str | None, open_parent: OpenParent,
                 resolve: Resolve) -> VirtualDisk:
    """The parent: the explicit ``parent``, or the first reference that stays inside the child's
    directory tree and names a VHD whose unique id is the one the child records."""
    header = image.header
    assert header is not None
    want = header.parent_unique_id
    if not any(want):
        raise ParentNotFound(
            f"{image.path}: header.parent_unique_id at offset "
            f"{image.header_offset + HEADER_OFFSETS['parent_unique_id']} is all zeros: the "
            "disk does not say which disk its parent is, and vhdkit does not guess")
    if parent is not None:  # named by the user: trusted location, identity still checked
        candidates = [parent]
        refused: list[str] = []
    else:
        candidates, refused = _resolve_references(image, resolve)
    rejected: list[str] = []
    for path in dict.fromkeys(candidates):
        if parent is None and not os.path.exists(path):
            continue
        try:
            disk = open_parent(path)
        except (FormatError, DiskIOError, UnsupportedDisk) as exc:
            if parent is not None:
                raise
            rejected.append(f"{path}: {exc}")
            continue
        why = _identity_problem(disk, want)
        if why is None:
            return disk
        disk.close()
        rejected.append(f"{path} {why}")
    if parent is not None:
        raise ParentNotFound(f"{image.path}: the parent given, {rejected[0]}")
    parts = [f"{image.path}: parent disk not found"]
    if rejected:
        parts.append("; rejected: " + "; ".join(rejected))
    if refused:
        parts.append("; not followed (outside the disk's directory): " + ", ".join(refused))
    tried = ", ".join(dict.fromkeys(candidates)) or "no parent locators"
    parts.append(f"; tried {tried}; name the parent with --parent PATH")
    raise ParentNotFound("".join(parts))


def _resolve_references(image: VhdImage, resolve: Resolve) -> tuple[list[str], list[str]]:
    """Paths of the references inside the child's tree, and the refused ones (each reported
    as a ``vhd.parent-locator`` warning on the image)."""
    paths: list[str] = []
    refused: list[str] = []
    for ref in parent_references(image):
        try:
            paths.append(resolve(image.path, ref.text))
        except ParentNotFound:
            refused.append(repr(ref.text))
            image.anomalies.append(Anomaly("vhd.parent-locator", FormatError(
                ref.field, ref.offset,
                f"refers to {ref.text!r}, outside the disk's directory: not followed (name the "
                "parent with --parent PATH if you trust it)"), "warning"))
    return paths, refused


def _identity_problem(disk: VirtualDisk, want: bytes) -> str | None:
    """Why ``disk`` is not the parent whose unique id is ``want`` (None when it is)."""
    image = getattr(disk, "image", None)
    if not isinstance(image, VhdImage):
        return (f"is a {disk.kind} disk, not a VHD: the parent of a VHD differencing disk is "
                "a VHD")
    got = image.footer.unique_id
    if got != want:
        return (f"has unique id {uuid.UUID(bytes=got)}, the child expects "
                f"{uuid.UUID(bytes=want)}")
    return None


def vhd_footer(disk: VirtualDisk) -> Footer | None:
    """The footer of a VHD-backed disk, else None."""
    image = getattr(disk, "image", None)
    return image.footer if isinstance(image, VhdImage) else None
