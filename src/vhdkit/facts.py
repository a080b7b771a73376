"""``inspect``: the facts about a disk image, as a stable, JSON-ready dictionary.

The layout is documented in docs/JSON.md; keys are only ever added, never renamed.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

from .errors import ParentNotFound
from .extents import total
from .formats import DynamicVhdDisk, VirtualDisk, open_disk
from .formats.base import file_size
from .formats.vhd_alone import open_child_alone
from .formats.vhd_image import VhdImage
from .formats.vhd_structs import VHD_EPOCH, DiskType, Footer

SCHEMA_VERSION = 1


def vhd_time(stamp: int) -> str:
    """A VHD timestamp (seconds since 2000-01-01 UTC) as ISO 8601."""
    return dt.datetime.fromtimestamp(VHD_EPOCH + stamp, tz=dt.timezone.utc).isoformat()


def text_code(raw: bytes) -> str:
    return raw.decode("latin-1").replace("\x00", "\\0")


def footer_facts(f: Footer) -> dict[str, Any]:
    return {
        "creator_app": text_code(f.creator_app),
        "creator_version": f"{f.creator_version >> 16}.{f.creator_version & 0xFFFF}",
        "creator_os": text_code(f.creator_os),
        "features": f.features,
        "format_version": f"{f.version >> 16}.{f.version & 0xFFFF}",
        "timestamp": vhd_time(f.timestamp),
        "original_size": f.original_size,
        "current_size": f.current_size,
        "geometry": {
            "cylinders": f.cylinders,
            "heads": f.heads,
            "sectors_per_track": f.sectors_per_track,
            "size": f.geometry_size,
        },
        "unique_id": str(uuid.UUID(bytes=f.unique_id)),
        "saved_state": bool(f.saved_state),
    }


def _dynamic_facts(disk: DynamicVhdDisk, parent_error: str | None = None) -> dict[str, Any]:
    img = disk.image
    assert img.header is not None and img.bat is not None
    h = img.header
    allocated = disk.allocated_blocks()
    out: dict[str, Any] = {
        "header_offset": img.header_offset,
        "table_offset": h.table_offset,
        "block_size": h.block_size,
        "bat_entries_total": h.max_table_entries,
        "bat_entries_allocated": allocated,
        "allocated_bytes": allocated * h.block_size,
    }
    if img.disk_type == DiskType.DIFFERENCING:
        parent = disk.parent
        out["parent"] = {
            "name": h.parent_name_text,
            "unique_id": str(uuid.UUID(bytes=h.parent_unique_id)),
            "timestamp": vhd_time(h.parent_timestamp),
            "locators": [
                {"platform": loc.platform_code, "path": loc.path, "offset": loc.data_offset,
                 "length": loc.data_length}
                for loc in img.locators
            ],
            "resolved_path": parent.path if parent is not None else None,
            "kind": parent.kind if parent is not None else None,
            "error": parent_error,
        }
    return out


#: keys of ``VirtualDisk.facts()`` shown at the top level rather than under ``details``
_TOP = ("format", "subformat", "allocated_bytes")


def allocated_bytes(disk: VirtualDisk, facts: dict[str, Any] | None = None) -> int:
    """Bytes this file itself allocates for data (its own blocks, clusters or grains; for raw
    and fixed images, the ranges that are not holes)."""
    f = disk.facts() if facts is None else facts
    value = f.get("allocated_bytes")
    return int(value) if isinstance(value, int) else total(disk.extents())


def chain_facts(disk: VirtualDisk) -> list[dict[str, Any]]:
    """The disk and every disk it reads from, child first."""
    out = []
    for member in disk.chain():
        f = member.facts()
        out.append({"path": member.path, "format": f.get("format", member.kind),
                    "subformat": f.get("subformat"), "virtual_size": member.size,
                    "allocated_bytes": allocated_bytes(member, f)})
    return out


def describe(disk: VirtualDisk, parent_error: str | None = None) -> dict[str, Any]:
    """Facts about an opened disk, whatever its container (``parent_error``: why a differencing
    disk has no parent)."""
    found = getattr(disk, "image", None)  # other readers may name an attribute "image" too
    image = found if isinstance(found, VhdImage) else None
    own = disk.facts()
    # a reader's own facts name its container (vmdk, ova, ...); VHDs are told by their image
    fmt = "vhd" if image is not None else str(own.get("format") or disk.kind)
    size_of_file = file_size(disk.path)
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "path": disk.path,
        "format": fmt,
        "subformat": own.get("subformat"),
        "disk_type": disk.kind.removeprefix("vhd-") if image is not None else None,
        "virtual_size": disk.size,
        "file_size": size_of_file,
        "data_bytes": total(disk.extents()),
        "allocated_bytes": allocated_bytes(disk, own),
        "details": {k: v for k, v in own.items() if k not in _TOP},
        "chain": chain_facts(disk),
    }
    if image is not None:
        out["footer"] = footer_facts(image.footer)
        out["footer"]["offset"] = image.footer_offset
        out["footer"]["legacy_511_bytes"] = image.legacy_footer
        if isinstance(disk, DynamicVhdDisk):
            out["dynamic"] = _dynamic_facts(disk, parent_error)
        out["anomalies"] = [
            {"rule": a.rule, "severity": a.severity, "field": a.error.field,
             "offset": a.error.offset, "message": a.error.problem}
            for a in image.anomalies
        ]
    return out


def inspect_path(path: str | os.PathLike[str], parent: str | os.PathLike[str] | None = None,
                 *, member: int | None = None, format: str | None = None) -> dict[str, Any]:
    """Open ``path`` (strictly: a malformed image raises FormatError) and describe it;
    ``member`` picks a disk of an OVA holding several; ``format`` forces a reader, as
    ``open_disk`` does.

    A differencing VHD whose parent is missing is still described from its own metadata
    (footer, header, locators), with the reason in ``dynamic.parent.error``.
    """
    try:
        disk = open_disk(path, parent, disk=member, format=format)
    except ParentNotFound as exc:
        alone = open_child_alone(os.fspath(path)) if parent is None else None
        if alone is None:
            raise
        with alone:
            return describe(alone, str(exc))
    with disk:
        return describe(disk)
