"""Declarations of the VHD on-disk structures. No I/O here.

Big-endian throughout. Reserved areas are kept as raw bytes (not ``Padding``) so that
parse -> build reproduces the input byte for byte, even when a writer left garbage there.
The checksum sits in the middle of the footer and header, so it is computed by a plain function
over the raw bytes rather than by a construct ``Checksum`` field.

The footer, the one structure every command reads (``check`` of a fixed VHD reads nothing
else), is a table of ``struct`` codes: importing ``construct`` costs more than the rest of such a
run. The dynamic header and the BAT are ``construct`` declarations, built on first use.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .layout import Layout, offsets

if TYPE_CHECKING:
    import construct as cs
    import numpy as np

FOOTER_SIZE = 512
HEADER_SIZE = 1024
SECTOR = 512
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
VHDX_SIGNATURE = b"vhdxfile"
VERSION_1_0 = 0x00010000
FEATURE_RESERVED = 0x2
FEATURE_TEMPORARY = 0x1
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_UNUSED = 0xFFFFFFFF
#: seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z)
VHD_EPOCH = 946684800
MAX_DYNAMIC_SIZE = 2040 * 1024**3
MAX_CHS_SECTORS = 65535 * 16 * 255
#: checksum field offsets inside footer and header
FOOTER_CHECKSUM_OFFSET = 64
HEADER_CHECKSUM_OFFSET = 36


class DiskType(enum.IntEnum):
    NONE = 0
    RESERVED_1 = 1
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4
    RESERVED_5 = 5
    RESERVED_6 = 6


VALID_DISK_TYPES = (DiskType.FIXED, DiskType.DYNAMIC, DiskType.DIFFERENCING)

# Creator applications whose ``current size`` qemu trusts over the CHS geometry.
QEMU_TRUSTS_CURRENT_SIZE = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")

#: The footer: (field, ``struct`` code), in order.
FOOTER_FIELDS: tuple[tuple[str, str], ...] = (
    ("cookie", "8s"),
    ("features", "I"),
    ("version", "I"),
    ("data_offset", "Q"),
    ("timestamp", "I"),
    ("creator_app", "4s"),
    ("creator_version", "I"),
    ("creator_os", "4s"),
    ("original_size", "Q"),
    ("current_size", "Q"),
    ("cylinders", "H"),
    ("heads", "B"),
    ("sectors_per_track", "B"),
    # any value parses; Footer.problems() reports the reserved ones
    ("disk_type", "I"),
    ("checksum", "I"),
    ("unique_id", "16s"),
    ("saved_state", "B"),
    ("reserved", "427s"),
)
FOOTER = Layout("FooterFields", FOOTER_FIELDS)
assert FOOTER.size == FOOTER_SIZE
FOOTER_OFFSETS = FOOTER.offsets

#: The dynamic header: (field, size); ``parent_locators`` is 8 locators of 24 bytes.
HEADER_LAYOUT: tuple[tuple[str, int], ...] = (
    ("cookie", 8), ("data_offset", 8), ("table_offset", 8), ("header_version", 4),
    ("max_table_entries", 4), ("block_size", 4), ("checksum", 4), ("parent_unique_id", 16),
    ("parent_timestamp", 4), ("reserved1", 4), ("parent_name", 512), ("parent_locators", 192),
    ("reserved2", 256),
)
HEADER_OFFSETS = offsets(HEADER_LAYOUT)
assert sum(size for _, size in HEADER_LAYOUT) == HEADER_SIZE


@functools.cache
def header_struct() -> cs.Struct:
    """The dynamic header as a ``construct`` declaration (built on first use)."""
    import construct as cs

    locator = cs.Struct(
        "platform_code" / cs.Bytes(4),
        "data_space" / cs.Int32ub,
        "data_length" / cs.Int32ub,
        "reserved" / cs.Int32ub,
        "data_offset" / cs.Int64ub,
    )
    header = cs.Struct(
        "cookie" / cs.Bytes(8),
        "data_offset" / cs.Int64ub,
        "table_offset" / cs.Int64ub,
        "header_version" / cs.Int32ub,
        "max_table_entries" / cs.Int32ub,
        "block_size" / cs.Int32ub,
        "checksum" / cs.Int32ub,
        "parent_unique_id" / cs.Bytes(16),
        "parent_timestamp" / cs.Int32ub,
        "reserved1" / cs.Bytes(4),
        "parent_name" / cs.Bytes(512),
        "parent_locators" / cs.Array(8, locator),
        "reserved2" / cs.Bytes(256),
    )
    assert [(sub.name, sub.sizeof()) for sub in header.subcons] == list(HEADER_LAYOUT)
    return header


def bat_struct(entries: int) -> cs.Construct:
    """Declaration of a BAT of ``entries`` big-endian sector numbers (for building and tests)."""
    import construct as cs

    return cs.Array(entries, cs.Int32ub)


def parse_bat(raw: bytes) -> np.ndarray[Any, np.dtype[np.uint32]]:
    """Parse BAT bytes; equivalent to ``bat_struct(n).parse`` but vectorised for large tables."""
    import numpy as np

    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def vhd_checksum(raw: bytes, checksum_offset: int) -> int:
    """One's complement of the byte sum, the 4 checksum bytes counted as zero."""
    total = sum(raw) - sum(raw[checksum_offset : checksum_offset + 4])
    return (~total) & 0xFFFFFFFF


def chs_geometry(size: int) -> tuple[int, int, int]:
    """CHS geometry (cylinders, heads, sectors/track) for a size, per the VHD specification."""
    ts = min(size // SECTOR, MAX_CHS_SECTORS)
    if ts >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = ts // spt
    else:
        spt = 17
        cth = ts // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = ts // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = ts // spt
    return cth // heads, heads, spt


def _trunc(value: bytes) -> str:
    return repr(value[:16])


def _envelope_problems(
    name: str, offsets: dict[str, int], base: int, raw: bytes, want_cookie: bytes, cookie: bytes,
    checksum: int, version: tuple[str, int],
) -> list[FormatError]:
    """Cookie, checksum and version: the checks footer and dynamic header share."""
    out: list[FormatError] = []

    def bad(field: str, problem: str) -> None:
        out.append(FormatError(f"{name}.{field}", base + offsets[field], problem))

    if cookie != want_cookie:
        bad("cookie", f"expected {want_cookie!r}, found {_trunc(cookie)}")
    want = vhd_checksum(raw, offsets["checksum"])
    if checksum != want:
        bad("checksum", f"stored 0x{checksum:08x}, computed 0x{want:08x}")
    if version[1] != VERSION_1_0:
        bad(version[0], f"expected 0x00010000, found 0x{version[1]:08x}")
    return out


@dataclass(frozen=True)
class Footer:
    """The 512-byte hard disk footer (copied at offset 0 for dynamic and differencing disks)."""

    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Footer:
        if len(raw) != FOOTER_SIZE:
            raise ValueError("footer must be 512 bytes")
        return cls(*FOOTER.format.unpack(raw))

    def build(self) -> bytes:
        return FOOTER.format.pack(*(getattr(self, name) for name, _ in FOOTER_FIELDS))

    def with_checksum(self) -> Footer:
        """A copy whose checksum field is correct for its other fields."""
        raw = replace(self, checksum=0).build()
        return replace(self, checksum=vhd_checksum(raw, FOOTER_CHECKSUM_OFFSET))

    @property
    def geometry_size(self) -> int:
        return self.cylinders * self.heads * self.sectors_per_track * SECTOR

    @property
    def legacy(self) -> bool:
        """Very old images: features bit 0x2 clear (often with a 511-byte footer)."""
        return not self.features & FEATURE_RESERVED

    def problems(self, raw: bytes, base: int) -> list[FormatError]:
        """Everything wrong with this footer, as errors naming field and absolute offset."""
        out = _envelope_problems("footer", FOOTER_OFFSETS, base, raw, FOOTER_COOKIE, self.cookie,
                                 self.checksum, ("version", self.version))

        def bad(name: str, problem: str) -> None:
            out.append(FormatError(f"footer.{name}", base + FOOTER_OFFSETS[name], problem))

        if self.disk_type not in VALID_DISK_TYPES:
            bad("disk_type", f"type {self.disk_type} is reserved (expected 2, 3 or 4)")
        if self.current_size % SECTOR:
            bad("current_size", f"{self.current_size} is not a multiple of 512")
        return out


# Footer.parse/build pass the fields positionally, in the table's order.
assert tuple(f.name for f in fields(Footer)) == tuple(name for name, _ in FOOTER_FIELDS)


@dataclass(frozen=True)
class ParentLocator:
    platform_code: bytes
    data_space: int
    data_length: int
    reserved: int
    data_offset: int


@dataclass(frozen=True)
class DynamicHeader:
    """The 1024-byte dynamic disk header at ``footer.data_offset``."""

    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_timestamp: int
    reserved1: bytes
    parent_name: bytes
    parent_locators: tuple[ParentLocator, ...]
    reserved2: bytes

    @classmethod
    def parse(cls, raw: bytes) -> DynamicHeader:
        if len(raw) != HEADER_SIZE:
            raise ValueError("dynamic header must be 1024 bytes")
        c = header_struct().parse(raw)
        values: dict[str, Any] = {f.name: c[f.name] for f in fields(cls)}
        values["parent_locators"] = tuple(
            ParentLocator(**{k: loc[k] for k in LOCATOR_STRUCT_NAMES}) for loc in c.parent_locators
        )
        return cls(**values)

    def build(self) -> bytes:
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        values["parent_locators"] = [
            {k: getattr(loc, k) for k in LOCATOR_STRUCT_NAMES} for loc in self.parent_locators
        ]
        return bytes(header_struct().build(values))

    def with_checksum(self) -> DynamicHeader:
        raw = replace(self, checksum=0).build()
        return replace(self, checksum=vhd_checksum(raw, HEADER_CHECKSUM_OFFSET))

    @property
    def parent_name_text(self) -> str:
        return self.parent_name.decode("utf-16-be", errors="replace").split("\x00", 1)[0]

    @property
    def bitmap_size(self) -> int:
        """Bytes of sector bitmap in front of each block, padded to a 512-byte multiple."""
        nbytes = (self.block_size // SECTOR + 7) // 8
        return (nbytes + SECTOR - 1) // SECTOR * SECTOR

    def problems(self, raw: bytes, base: int) -> list[FormatError]:
        out = _envelope_problems("header", HEADER_OFFSETS, base, raw, HEADER_COOKIE, self.cookie,
                                 self.checksum, ("header_version", self.header_version))
        bs = self.block_size
        if bs < SECTOR or bs & (bs - 1):
            out.append(FormatError("header.block_size", base + HEADER_OFFSETS["block_size"],
                                   f"{bs} is not a power of two of at least 512"))
        return out


LOCATOR_STRUCT_NAMES = ("platform_code", "data_space", "data_length", "reserved", "data_offset")
