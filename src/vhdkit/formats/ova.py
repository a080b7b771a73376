"""OVA: a tar of an OVF descriptor and its disks. The disk is read in place, as a byte range of
the archive (a tar member's data is contiguous), never extracted.

Disks are numbered from 1 in the order of the OVF's DiskSection; ``--disk N`` picks one when the
OVF lists several.
"""

from __future__ import annotations

import os
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError, UnsupportedDisk, UsageError
from ..extents import Extent
from .base import VirtualDisk
from .region import Region
from .tar_index import Member, tar_members
from .vmdk import VmdkDisk, open_sparse_region

MAX_OVF = 4 << 20
#: ovf:capacityAllocationUnits, e.g. "byte * 2^30" (small numbers only: no huge powers)
_UNITS = re.compile(r"^\s*byte\s*(?:\*\s*(\d{1,4})\s*\^\s*(\d{1,2}))?\s*$")


@dataclass(frozen=True)
class OvfDisk:
    disk_id: str
    href: str | None
    capacity: int | None
    format: str | None
    compression: str | None
    chunked: bool

    def as_dict(self, number: int) -> dict[str, Any]:
        return {"disk": number, "id": self.disk_id, "file": self.href, "capacity": self.capacity,
                "format": self.format}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


def _clean(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


def parse_ovf(raw: bytes, at: int) -> list[OvfDisk]:
    """Disks of an OVF envelope, in DiskSection order."""
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        # An OVF has no document type; entities could expand without bound.
        raise FormatError("ovf", at, "the OVF declares a DOCTYPE or entities, which OVF does not"
                                     " use")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise FormatError("ovf", at, f"not well-formed XML ({exc})") from exc
    files: dict[str, ET.Element] = {}
    disks: list[tuple[ET.Element, ET.Element | None]] = []
    for el in root.iter():
        if _local(el.tag) == "File":
            fid = _attr(el, "id")
            if fid is not None:
                files[fid] = el
    for el in root.iter():
        if _local(el.tag) == "Disk":
            ref = _attr(el, "fileRef")
            disks.append((el, files.get(ref) if ref is not None else None))
    out = []
    for el, file in disks:
        out.append(OvfDisk(
            disk_id=_attr(el, "diskId") or "?",
            href=_attr(file, "href") if file is not None else None,
            capacity=_capacity(el, at),
            format=_attr(el, "format"),
            compression=_attr(file, "compression") if file is not None else None,
            chunked=file is not None and _attr(file, "chunkSize") is not None,
        ))
    return out


def _capacity(el: ET.Element, at: int) -> int | None:
    value = _attr(el, "capacity")
    if value is None or not value.strip().isdigit() or len(value.strip()) > 24:
        return None
    m = _UNITS.match(_attr(el, "capacityAllocationUnits") or "byte")
    if m is None:
        return None
    base, exp = m.groups()
    scale = int(base) ** int(exp) if base is not None and int(exp) <= 64 else 1
    return int(value) * scale


class OvaDisk(VirtualDisk):
    """One disk of an OVA, read out of the archive in place."""

    kind = "ova"

    def __init__(self, path: str, fd: int, disks: list[OvfDisk], number: int,
                 inner: VmdkDisk) -> None:
        self.path = path
        self._fd = fd
        self.disks = disks
        self.number = number
        self.inner = inner

    @property
    def size(self) -> int:
        return self.inner.size

    def extents(self) -> list[Extent]:
        return self.inner.extents()

    def _read(self, offset: int, length: int) -> bytes:
        return self.inner._read(offset, length)

    def read_into(self, offset: int, buf: memoryview) -> None:
        self.inner.read_into(offset, buf)

    def facts(self) -> dict[str, Any]:
        # the VMDK's own facts, then which disk of the OVA it is
        return {**self.inner.facts(), "format": "ova",
                "disks": [d.as_dict(i) for i, d in enumerate(self.disks, 1)],
                "disk": self.number}

    def close(self) -> None:
        self.inner.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _not_ova(path: str, why: str) -> UnsupportedDisk:
    return UnsupportedDisk(f"{path}: a tar archive that is not an OVA ({why}); unpack it first "
                           "(tar -xf) and give vhdkit the disk inside")


def list_disks(fd: int, size: int, path: str) -> tuple[list[Member], list[OvfDisk], int]:
    """The archive's members, the disks its OVF lists, and the OVF's offset in the archive."""
    members = tar_members(fd, size, path)
    ovf = next((m for m in members if m.name.lower().endswith(".ovf")), None)
    if ovf is None:
        raise _not_ova(path, "no .ovf descriptor in it")
    if ovf.size > MAX_OVF:
        raise FormatError(f"tar member {ovf.name!r}.size", ovf.header,
                          f"an OVF of {ovf.size} bytes; at most {MAX_OVF} are read")
    raw = Region(fd, ovf.offset, ovf.size, path).pread(0, ovf.size)
    return members, parse_ovf(raw, ovf.offset), ovf.offset


def open_ova(path: str, fd: int, size: int, parent: str | None, number: int | None) -> OvaDisk:
    """The disk ``number`` (1-based) of an OVA; owns ``fd`` from the call on."""
    try:
        members, disks, ovf_at = list_disks(fd, size, path)
        if not disks:
            raise _not_ova(path, "its OVF lists no disks")
        if number is None:
            if len(disks) > 1:
                shown = ", ".join(f"{i}: {d.href} ({d.capacity or '?'} bytes)"
                                  for i, d in enumerate(disks[:16], 1))
                raise UsageError(f"{path}: several disks in this OVA ({shown}): pick one with "
                                 f"--disk N")
            number = 1
        if not 1 <= number <= len(disks):
            raise UsageError(f"{path}: --disk {number}: the OVA has {len(disks)} disk"
                             f"{'s' if len(disks) > 1 else ''} (1..{len(disks)})")
        if parent is not None:
            raise UsageError(f"{path}: an OVA disk has no parent; --parent does not apply")
        chosen = disks[number - 1]
        label = f"{path}: disk {number} ({chosen.href})"
        if chosen.href is None:
            raise FormatError("ovf Disk.fileRef", ovf_at, f"{label}: names no File of References")
        if chosen.compression not in (None, "", "identity") or chosen.chunked:
            raise UnsupportedDisk(f"{label}: stored {chosen.compression or 'in chunks'}; "
                                  "extract the OVA first (tar -xf, then unpack the disk)")
        by_name = {_clean(m.name): m for m in members}
        member = by_name.get(_clean(chosen.href))
        if member is None or "://" in chosen.href:
            raise FormatError("ovf File.href", ovf_at,
                              f"{label}: not a member of the archive (vhdkit reads only disks "
                              "inside the OVA)")
        region = Region(fd, member.offset, member.size, label)
        inner = open_sparse_region(region, label)
        return OvaDisk(path, fd, disks, number, inner)
    except BaseException:
        os.close(fd)
        raise
