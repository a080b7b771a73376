"""The VMDK text descriptor: disk identity (CID, parent), create type, extent lines, ddb entries.

A descriptor is a small text file (or a text area embedded in a sparse extent). Parsing is
line-based and bounded: the caller hands in at most ``MAX_DESCRIPTOR`` bytes, and at most
``MAX_EXTENTS`` extent lines are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import FormatError, UnsupportedDisk
from .vmdk_structs import NO_PARENT_CID

#: a descriptor larger than this is not a descriptor (VMware writes about 1 KiB)
MAX_DESCRIPTOR = 1 << 20
#: extent lines of one disk (a 64 TiB twoGbMaxExtent* disk has 32768; real disks far fewer)
MAX_EXTENTS = 4096

_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?'
                     r"\s*$")
_KEY = re.compile(r'^([A-Za-z][\w.]*)\s*=\s*(.*?)\s*$')

#: extent types whose data lies in a plain file, from an offset on
FLAT_TYPES = ("FLAT", "VMFS")
#: extent types whose data lies in a sparse file: KDMV, or COWD (ESX vmfsSparse snapshots)
SPARSE_TYPES = ("SPARSE", "VMFSSPARSE")
#: extent types vhdkit does not read, with what they are
REFUSED_EXTENTS = {
    "SESPARSE": "seSparse (ESXi space-efficient snapshot)",
    "VMFSRDM": "raw device mapping (vmfsRDM)",
    "VMFSRAW": "raw device mapping (vmfsRaw)",
}
#: create types that name a device or a snapshot format vhdkit does not read
REFUSED_TYPES = {
    "sesparse": "seSparse (ESXi space-efficient snapshot)",
    "vmfsraw": "raw device mapping (vmfsRaw)",
    "vmfsrdm": "raw device mapping (vmfsRDM)",
    "vmfsrdmp": "raw device mapping (vmfsRDMP)",
    "vmfspassthroughrawdevicemap": "raw device mapping (vmfsPassthroughRawDeviceMap)",
    "vmfsrawdevicemap": "raw device mapping (vmfsRawDeviceMap)",
    "fulldevice": "a whole physical device (fullDevice)",
    "partitioneddevice": "physical partitions (partitionedDevice)",
    "monolithicsparsecowd": "COWD sparse",
}


@dataclass(frozen=True)
class ExtentLine:
    access: str
    sectors: int
    type: str
    file: str | None
    #: FLAT/VMFS: where the extent's data starts in its file, in sectors
    offset: int
    #: byte offset of the line in the descriptor (for messages)
    at: int


@dataclass
class Descriptor:
    version: int | None = None
    cid: int | None = None
    parent_cid: int = NO_PARENT_CID
    create_type: str | None = None
    parent_hint: str | None = None
    extents: list[ExtentLine] = field(default_factory=list)
    ddb: dict[str, str] = field(default_factory=dict)

    @property
    def has_parent(self) -> bool:
        return self.parent_cid != NO_PARENT_CID


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _hex32(value: str, name: str, at: int) -> int:
    try:
        n = int(value, 16)
    except ValueError:
        raise FormatError(f"descriptor.{name}", at, f"not a hexadecimal number: {value[:40]!r}"
                          ) from None
    if not 0 <= n <= 0xFFFFFFFF:
        raise FormatError(f"descriptor.{name}", at, f"{value[:40]!r} is not a 32-bit value")
    return n


def parse_descriptor(raw: bytes, base: int = 0) -> Descriptor:
    """Parse descriptor text; ``base`` is its byte offset in the file (for messages)."""
    if len(raw) > MAX_DESCRIPTOR:
        raise FormatError("descriptor", base, f"{len(raw)} bytes; a VMDK descriptor is at most "
                                              f"{MAX_DESCRIPTOR} bytes")
    text = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    d = Descriptor()
    pos = base
    for line in text.splitlines(keepends=True):
        at = pos
        pos += len(line.encode("utf-8", errors="replace"))
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _EXTENT.match(s)
        if m:
            if len(d.extents) >= MAX_EXTENTS:
                raise FormatError("descriptor.extents", at, f"more than {MAX_EXTENTS} extents")
            access, sectors, kind, name, offset = m.groups()
            if len(sectors) > 20 or (offset is not None and len(offset) > 20):
                raise FormatError("descriptor.extent", at, "extent size or offset out of range")
            d.extents.append(ExtentLine(access, int(sectors), kind.upper(), name,
                                        int(offset or 0), at))
            continue
        k = _KEY.match(s)
        if not k:
            continue  # VMware ignores lines it does not know; so do we
        key, value = k.group(1), _unquote(k.group(2))
        low = key.lower()
        if low == "cid":
            d.cid = _hex32(value, "CID", at)
        elif low == "parentcid":
            d.parent_cid = _hex32(value, "parentCID", at)
        elif low == "createtype":
            d.create_type = value
        elif low == "parentfilenamehint":
            d.parent_hint = value
        elif low == "version":
            d.version = int(value) if value.isdigit() and len(value) < 6 else None
        elif low.startswith("ddb.") and len(d.ddb) < 256:
            d.ddb[key[4:]] = value[:256]
    return d


def refuse_create_type(d: Descriptor, path: str) -> None:
    """Refuse by name the create types vhdkit does not read."""
    what = REFUSED_TYPES.get((d.create_type or "").lower())
    if what is not None:
        raise UnsupportedDisk(
            f"{path}: a VMDK of type {what}, which vhdkit does not read; convert it with "
            "VMware (vmkfstools -i DISK disk.vmdk -d thin) or qemu-img convert -O raw first")


def refuse_extent(line: ExtentLine, path: str) -> None:
    what = REFUSED_EXTENTS.get(line.type)
    if what is None and line.type not in (*FLAT_TYPES, "ZERO", *SPARSE_TYPES):
        what = f"unknown type {line.type}"
    if what is not None:
        raise UnsupportedDisk(
            f"{path}: extent {line.file or ''!r} is a {what} extent, which vhdkit does not read;"
            " convert the disk with VMware or qemu-img convert -O raw first")
    if line.access == "NOACCESS":
        raise UnsupportedDisk(f"{path}: extent {line.file or ''!r} is marked NOACCESS; "
                              "vhdkit reads only disks whose extents are all readable")
