"""The VHDX allocation map: which payload blocks may hold data.

Data is read through libvhdi (pyvhdi); this module only parses the structures that say where
data is (header, region table, metadata, BAT), so that convert and upload skip blocks that are
absent or known to be zero instead of reading the whole virtual disk. Whenever anything is
unusual (a pending log, a parent disk, a table that does not fit) it answers None and the
caller treats the whole disk as possibly holding data: a wrong answer here would lose data, a
missing one only costs reading time.
"""

from __future__ import annotations

import os
import uuid

import construct as cs
import numpy as np

from ..extents import Extent, merge

KIB = 1024
MIB = 1024 * KIB
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
REGION_TABLE_OFFSET = 192 * KIB
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_SIZE_GUID = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
LOGICAL_SECTOR_GUID = uuid.UUID("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
#: payload block states that certainly read as zeros on a disk without a parent. UNMAPPED (3)
#: and UNDEFINED (1) are not among them: a reader may still return old bytes for those.
ABSENT_STATES = (0, 2)  # NOT_PRESENT, ZERO
MAX_REGION_ENTRIES = 2047
#: 32 Mi entries (a 256 MiB table) maps 32 TiB in 1 MiB blocks; past that, no map (memory bound)
MAX_BAT_ENTRIES = 1 << 25
MAX_METADATA_ENTRIES = 2047

HEADER = cs.Struct(
    "signature" / cs.Const(b"head"),
    "checksum" / cs.Int32ul,
    "sequence" / cs.Int64ul,
    "file_write_guid" / cs.Bytes(16),
    "data_write_guid" / cs.Bytes(16),
    "log_guid" / cs.Bytes(16),
    "log_version" / cs.Int16ul,
    "version" / cs.Int16ul,
    "log_length" / cs.Int32ul,
    "log_offset" / cs.Int64ul,
)
REGION_TABLE = cs.Struct(
    "signature" / cs.Const(b"regi"),
    "checksum" / cs.Int32ul,
    "count" / cs.Int32ul,
    "reserved" / cs.Int32ul,
)
REGION_ENTRY = cs.Struct(
    "guid" / cs.Bytes(16),
    "offset" / cs.Int64ul,
    "length" / cs.Int32ul,
    "required" / cs.Int32ul,
)
METADATA_TABLE = cs.Struct(
    "signature" / cs.Const(b"metadata"),
    "reserved" / cs.Int16ul,
    "count" / cs.Int16ul,
    "reserved2" / cs.Bytes(20),
)
METADATA_ENTRY = cs.Struct(
    "guid" / cs.Bytes(16),
    "offset" / cs.Int32ul,
    "length" / cs.Int32ul,
    "flags" / cs.Int32ul,
    "reserved" / cs.Int32ul,
)


def _guid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw)  # VHDX stores GUIDs in the Windows mixed-endian layout


def _read(fd: int, offset: int, length: int, file_size: int) -> bytes | None:
    if offset < 0 or length < 0 or offset + length > file_size:
        return None
    data = os.pread(fd, length, offset)
    return data if len(data) == length else None


def vhdx_extents(path: str) -> list[Extent] | None:
    """Byte ranges of the virtual disk that may hold data, or None when unsure."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return vhdx_extents_fd(fd)
    finally:
        os.close(fd)


def vhdx_extents_fd(fd: int) -> list[Extent] | None:
    """``vhdx_extents`` of an open file (left open)."""
    try:
        return _extents(fd, os.fstat(fd).st_size)
    except (cs.ConstructError, ValueError, OverflowError):
        return None


def _extents(fd: int, file_size: int) -> list[Extent] | None:
    headers = []
    for off in HEADER_OFFSETS:
        raw = _read(fd, off, HEADER.sizeof(), file_size)
        if raw is not None and raw[:4] == b"head":
            headers.append(HEADER.parse(raw))
    if not headers:
        return None
    current = max(headers, key=lambda h: h.sequence)
    if any(current.log_guid):
        return None  # a log may hold BAT updates not yet applied to the file
    regions = _regions(fd, file_size)
    if regions is None or BAT_GUID not in regions or METADATA_GUID not in regions:
        return None
    params = _metadata(fd, file_size, *regions[METADATA_GUID])
    if params is None:
        return None
    block_size, has_parent, virtual_size, sector_size = params
    if has_parent or block_size < MIB or block_size & (block_size - 1) or virtual_size <= 0:
        return None
    chunk_ratio = (2**23 * sector_size) // block_size
    if chunk_ratio <= 0:
        return None
    blocks = -(-virtual_size // block_size)
    entries = blocks + (blocks - 1) // chunk_ratio
    bat_off, bat_len = regions[BAT_GUID]
    if entries * 8 > bat_len or entries > MAX_BAT_ENTRIES:
        return None
    raw = _read(fd, bat_off, entries * 8, file_size)
    if raw is None:
        return None
    bat = np.frombuffer(raw, dtype="<u8")
    # Sector-bitmap entries sit after every chunk_ratio payload entries.
    index = np.arange(blocks, dtype=np.int64)
    payload = bat[index + index // chunk_ratio]
    states = (payload & 7).astype(np.int64)
    present = np.flatnonzero(~np.isin(states, ABSENT_STATES))
    out = [Extent(int(b) * block_size, block_size) for b in present.tolist()]
    return [Extent(e.start, min(e.end, virtual_size) - e.start) for e in merge(out)]


def _regions(fd: int, file_size: int) -> dict[uuid.UUID, tuple[int, int]] | None:
    raw = _read(fd, REGION_TABLE_OFFSET, 64 * KIB, file_size)
    if raw is None:
        return None
    table = REGION_TABLE.parse(raw)
    if table.count > MAX_REGION_ENTRIES:
        return None
    out: dict[uuid.UUID, tuple[int, int]] = {}
    for i in range(table.count):
        e = REGION_ENTRY.parse(raw[16 + 32 * i : 48 + 32 * i])
        if e.offset + e.length > file_size:
            return None
        out[_guid(e.guid)] = (int(e.offset), int(e.length))
    return out


def _metadata(fd: int, file_size: int, offset: int,
              length: int) -> tuple[int, bool, int, int] | None:
    raw = _read(fd, offset, min(length, 64 * KIB), file_size)
    if raw is None:
        return None
    table = METADATA_TABLE.parse(raw)
    if table.count > MAX_METADATA_ENTRIES:
        return None
    items: dict[uuid.UUID, bytes] = {}
    for i in range(table.count):
        e = METADATA_ENTRY.parse(raw[32 + 32 * i : 64 + 32 * i])
        value = _read(fd, offset + e.offset, e.length, file_size) if e.length <= 64 else None
        if value is not None:
            items[_guid(e.guid)] = value
    try:
        params = items[FILE_PARAMETERS_GUID]
        size = items[VIRTUAL_SIZE_GUID]
        sector = items[LOGICAL_SECTOR_GUID]
    except KeyError:
        return None
    block_size = int.from_bytes(params[:4], "little")
    has_parent = bool(int.from_bytes(params[4:8], "little") & 0x2)
    return (block_size, has_parent, int.from_bytes(size[:8], "little"),
            int.from_bytes(sector[:4], "little"))
