"""Format declarations: round trips, checksums, CHS geometry, BAT parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import qemu
from vhdkit.formats.vhd_structs import (
    FOOTER_SIZE,
    HEADER_SIZE,
    DynamicHeader,
    Footer,
    bat_struct,
    chs_geometry,
    parse_bat,
    vhd_checksum,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.mark.parametrize("size,geometry", [
    (20 * MIB, (602, 4, 17)),
    (GIB, (2080, 16, 63)),
    (127 * GIB, (65278, 16, 255)),
    (128 * GIB, (65535, 16, 255)),
    (2 * 1024 * GIB, (65535, 16, 255)),
])
def test_chs_geometry_matches_the_specification(size: int, geometry: tuple[int, int, int]) -> None:
    assert chs_geometry(size) == geometry


@pytest.mark.parametrize("size", ["20M", "100M", "1G", "3000M"])
def test_chs_geometry_matches_qemu(size: str, tmp_path: Path) -> None:
    img = qemu.create(tmp_path / "g.vhd", "vpc", size)
    footer = Footer.parse(img.read_bytes()[-FOOTER_SIZE:])
    requested = {"20M": 20 * MIB, "100M": 100 * MIB, "1G": GIB, "3000M": 3000 * MIB}[size]
    # qemu rounds the size up to the first C*H*S that holds it, and stores that as the size;
    # the specification's algorithm gives back the same geometry for that size.
    geometry = (footer.cylinders, footer.heads, footer.sectors_per_track)
    assert geometry == chs_geometry(footer.current_size)
    assert footer.current_size == footer.geometry_size >= requested


def test_footer_and_header_round_trip(tmp_path: Path) -> None:
    img = qemu.create(tmp_path / "d.vhd", "vpc", "100M")
    data = img.read_bytes()
    tail = data[-FOOTER_SIZE:]
    footer = Footer.parse(tail)
    assert footer.build() == tail
    assert footer.problems(tail, 0) == []
    assert footer.with_checksum() == footer
    raw_header = data[footer.data_offset: footer.data_offset + HEADER_SIZE]
    header = DynamicHeader.parse(raw_header)
    assert header.build() == raw_header
    assert header.with_checksum() == header
    assert header.bitmap_size == 512 and header.block_size == 2 * MIB


def test_round_trip_keeps_garbage_in_reserved_fields(tmp_path: Path) -> None:
    img = qemu.create(tmp_path / "d.vhd", "vpc", "100M")
    raw = bytearray(img.read_bytes()[-FOOTER_SIZE:])
    raw[300:310] = b"0123456789"
    assert Footer.parse(bytes(raw)).build() == bytes(raw)


def test_checksum_is_ones_complement_of_byte_sum() -> None:
    raw = bytes(range(256)) * 2
    expected = (~(sum(raw) - sum(raw[64:68]))) & 0xFFFFFFFF
    assert vhd_checksum(raw, 64) == expected


@pytest.mark.parametrize("block_size,bitmap", [(512 * 1024, 512), (2 * MIB, 512),
                                               (4 * MIB, 1024), (4096, 512)])
def test_bitmap_size(block_size: int, bitmap: int, tmp_path: Path) -> None:
    img = qemu.create(tmp_path / "d.vhd", "vpc", "20M")
    data = img.read_bytes()
    off = Footer.parse(data[-FOOTER_SIZE:]).data_offset
    import dataclasses
    h = dataclasses.replace(DynamicHeader.parse(data[off: off + HEADER_SIZE]),
                            block_size=block_size)
    assert h.bitmap_size == bitmap


def test_fast_bat_parse_equals_construct_declaration() -> None:
    rng = np.random.default_rng(1)
    entries = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)
    entries[::7] = 0xFFFFFFFF
    raw = bat_struct(1000).build(entries.tolist())
    assert parse_bat(raw).tolist() == list(bat_struct(1000).parse(raw))
    assert parse_bat(raw).tolist() == entries.tolist()
