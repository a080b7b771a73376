"""VirtualDisk details: holes in raw and fixed files, legacy footers, the size contract."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cli_helpers import vhdkit
from fixtures.vhdbuild import MIB, build_fixed
from vhdkit.disk import open_disk
from vhdkit.extents import Extent, total
from vhdkit.vhd.structs import FOOTER_SIZE, Footer


def test_raw_extents_follow_file_holes(tmp_path: Path) -> None:
    p = tmp_path / "sparse.img"
    with p.open("wb") as fh:
        fh.truncate(64 * MIB)
        os.pwrite(fh.fileno(), b"\x01" * 4096, 10 * MIB)
        os.pwrite(fh.fileno(), b"\x02" * 512, 64 * MIB - 512)
    with open_disk(p) as disk:
        assert disk.kind == "raw" and disk.size == 64 * MIB
        ext = disk.extents()
        assert total(ext) <= 2 * MIB  # holes are not reported as data
        assert any(e.start <= 10 * MIB < e.end for e in ext)
        assert ext[-1].end == 64 * MIB
        assert disk.read_at(10 * MIB, 4096) == b"\x01" * 4096


def test_fixed_extents_stop_before_the_footer(tmp_path: Path) -> None:
    p = build_fixed(tmp_path / "f.vhd", 32 * MIB, writes={31 * MIB: b"\x05" * 512})
    with open_disk(p) as disk:
        ext = disk.extents()
        assert ext and ext[-1].end <= 32 * MIB
        assert disk.read_at(32 * MIB - 512, 1024) == bytes(512)  # the footer is not data


def test_legacy_511_byte_footer(tmp_path: Path) -> None:
    p = build_fixed(tmp_path / "old.vhd", 20 * MIB, writes={0: b"\x07" * 512})
    data = bytearray(p.read_bytes())
    footer = Footer.parse(bytes(data[-FOOTER_SIZE:]))
    old = dataclasses.replace(footer, features=0).with_checksum().build()
    assert old[-1] == 0
    p.write_bytes(bytes(data[:-FOOTER_SIZE]) + old[:-1])  # 511 bytes, no trailing reserved byte
    code, out, _ = vhdkit("inspect", "--json", str(p))
    assert code == 0
    assert '"legacy_511_bytes": true' in out and "vhd.legacy-footer" in out
    with open_disk(p) as disk:
        assert disk.size == 20 * MIB
        assert disk.read_at(0, 512) == b"\x07" * 512


def test_reads_past_the_end_are_short(tmp_path: Path) -> None:
    p = build_fixed(tmp_path / "f.vhd", 20 * MIB)
    with open_disk(p) as disk:
        assert disk.read_at(20 * MIB - 10, 100) == bytes(10)
        assert disk.read_at(20 * MIB, 100) == b""
        assert Extent(0, 1).end == 1
