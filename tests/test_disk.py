"""VirtualDisk details: holes in raw and fixed files, legacy footers, the size contract."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cli_helpers import vhdkit
from fixtures.vhdbuild import MIB, build_fixed
from vhdkit.extents import Extent, total
from vhdkit.formats import open_disk
from vhdkit.formats.vhd_structs import FOOTER_SIZE, Footer


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


def test_concurrent_reads_agree_with_the_reference(tmp_path: Path) -> None:
    """Upload plans and verifies from several threads at once: every reader must be safe."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from fixtures import qemu

    raw = tmp_path / "ref.raw"
    with raw.open("wb") as fh:
        fh.truncate(48 * MIB)
        for i in range(0, 48, 3):
            os.pwrite(fh.fileno(), bytes([i + 1]) * 300_000, i * MIB + 4096)
    ref = raw.read_bytes()
    images = [qemu.convert(raw, "raw", tmp_path / "d.vhdx", "vhdx"),
              qemu.convert(raw, "raw", tmp_path / "d.vhd", "vpc", "force_size=on")]
    for image in images:
        with open_disk(image) as disk:
            rng = random.Random(5)
            jobs = [(rng.randrange(0, 47 * MIB), rng.randrange(1, 2 * MIB)) for _ in range(400)]

            def read(job: tuple[int, int], disk: object = disk) -> bool:
                off, n = job
                return disk.read_at(off, n) == ref[off: off + n]  # type: ignore[attr-defined]

            with ThreadPoolExecutor(8) as pool:
                assert all(pool.map(read, jobs)), image.name


def test_vhdx_extents_come_from_its_bat(tmp_path: Path) -> None:
    from fixtures import qemu

    dyn = qemu.create(tmp_path / "d.vhdx", "vhdx", "256M")
    qemu.write(dyn, "vhdx", [(0, 4096, 1), (200 * MIB, 1 * MIB, 2)])
    with open_disk(dyn) as disk:
        ext = disk.extents()
        assert total(ext) < 32 * MIB  # two blocks, not the whole 256 MiB
        assert any(e.start <= 200 * MIB < e.end for e in ext) and ext[0].start == 0
        assert disk.read_at(200 * MIB, 512) == b"\x02" * 512
    # qemu marks every block of a fixed VHDX present unless block_state_zero is on
    full = qemu.create(tmp_path / "f.vhdx", "vhdx", "64M", "subformat=fixed",
                       "block_state_zero=off")
    with open_disk(full) as disk:
        assert total(disk.extents()) == 64 * MIB
    # anything unusual (here: a damaged region table) falls back to "all may be data"
    with dyn.open("r+b") as fh:
        fh.seek(192 * 1024)
        fh.write(b"XXXX")
    from vhdkit.formats.vhdx_bat import vhdx_extents

    assert vhdx_extents(str(dyn)) is None
