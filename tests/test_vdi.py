"""VirtualBox VDI, read natively: the same bytes as qemu-img, the block map as allocation map,
every damaged field refused in one line with field and offset, and mutations that raise only
vhdkit's errors."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import vhdkit
from fixtures import qemu, vdi_images
from fixtures.vdi_images import MIB, bmap, header, set_bmap, set_header
from vhdkit.errors import FormatError, ParentNotFound, UnsupportedDisk, VhdkitError
from vhdkit.extents import Extent, merge, nonzero_runs, subtract
from vhdkit.formats import open_disk
from vhdkit.formats.vdi_structs import BLOCK_FREE, BLOCK_ZERO, HEADER, OFFSETS


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("vdi")
    vdi_images.source(d)
    vdi_images.build(d)
    vdi_images.build(d, static=True)
    return d


@pytest.fixture(params=["dynamic", "static"])
def image(request: pytest.FixtureRequest, work: Path) -> Path:
    return work / f"{request.param}.vdi"


def qemu_data_ranges(path: Path) -> list[Extent]:
    entries: list[dict[str, Any]] = json.loads(
        qemu.run("qemu-img", "map", "-f", "vdi", "--output=json", str(path)))
    return merge(Extent(e["start"], e["length"]) for e in entries if e["data"])


def test_reads_the_bytes_qemu_reads(image: Path, tmp_path: Path) -> None:
    expected = qemu.to_raw(image, "vdi", tmp_path / "oracle.raw").read_bytes()
    with open_disk(image) as disk:
        assert disk.kind == "vdi"
        assert disk.size == len(expected) == vdi_images.SIZE
        assert disk.read_at(0, disk.size) == expected
        # reads that straddle block boundaries, allocated and not, and the end
        for off, length in ((MIB - 100, 300), (MIB + 1, 3 * MIB), (5 * MIB - 7, 9000),
                            (disk.size - 1000, 5000), (disk.size, 10)):
            assert disk.read_at(off, length) == expected[off : off + length]


def test_extents_are_exactly_the_allocated_blocks(image: Path) -> None:
    with open_disk(image) as disk:
        ext = disk.extents()
    assert ext == qemu_data_ranges(image)
    if "dynamic" in image.name:
        # blocks 0, 1, 5 and 7 (the partial last block) hold data; 2-4 and 6 are never read
        assert ext == [Extent(0, 2 * MIB), Extent(5 * MIB, MIB),
                       Extent(7 * MIB, vdi_images.SIZE - 7 * MIB)]
    else:
        assert ext == [Extent(0, vdi_images.SIZE)]


def test_facts(image: Path) -> None:
    h = header(image)
    static = "static" in image.name
    with open_disk(image) as disk:
        f = disk.facts()
    entries = bmap(image)
    assert f["format"] == "vdi" and f["subformat"] == ("fixed" if static else "dynamic")
    assert f["block_size"] == MIB and f["blocks"] == 8 and f["version"] == "1.1"
    assert f["allocated_blocks"] == sum(e < BLOCK_ZERO for e in entries) == (8 if static else 4)
    assert f["allocated_bytes"] == f["allocated_blocks"] * MIB
    # VirtualBox stores UUIDs with little-endian leading fields
    assert f["uuid"] == str(uuid.UUID(bytes_le=bytes(h.uuid_image))) != str(uuid.UUID(int=0))
    code, out, _ = vhdkit("inspect", "--json", str(image))
    doc = json.loads(out)
    assert code == 0 and doc["format"] == "vdi" and doc["details"]["uuid"] == f["uuid"]


def test_header_declaration_round_trips(image: Path) -> None:
    raw = image.read_bytes()[: HEADER.sizeof()]
    h = HEADER.parse(raw)
    assert HEADER.build(h) == raw
    assert h.text.startswith(b"<<< QEMU VM Virtual Disk Image >>>")
    assert (h.header_size, h.offset_bmap % 512, h.offset_data % 512) == (0x180, 0, 0)


def test_convert_then_qemu_compare(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.vhd"
    code, _, err = vhdkit("convert", str(image), str(out), "--verify")
    assert code in (0, 1), err  # 1: the converted disk is small for Azure (< 20 MiB)
    assert qemu.compare(image, "vdi", out, "vpc")[0] == 0


def test_zero_blocks_read_as_zeros_and_are_not_data(work: Path, tmp_path: Path) -> None:
    path = tmp_path / "z.vdi"
    shutil.copy(work / "dynamic.vdi", path)
    set_bmap(path, 1, BLOCK_ZERO)  # block 1 was allocated: now explicitly zero
    with open_disk(path) as disk:
        assert disk.read_at(MIB, MIB) == bytes(MIB)
        assert Extent(MIB, MIB) not in disk.extents()
        assert disk.facts()["zero_blocks"] == 1
    assert qemu.to_raw(path, "vdi", tmp_path / "z.raw").read_bytes()[MIB : 2 * MIB] == bytes(MIB)


# --- damaged images: one line, the field and its offset ------------------------------------------

def _damaged(work: Path, tmp_path: Path, static: bool = False) -> Path:
    path = tmp_path / "bad.vdi"
    shutil.copy(work / ("static.vdi" if static else "dynamic.vdi"), path)
    return path


HEADER_DAMAGE: list[tuple[str, dict[str, int], str]] = [
    ("signature", {"signature": 0xBEDA1080}, "header.signature"),
    ("version", {"version": 0x00020000}, "header.version"),
    ("header_size small", {"header_size": 16}, "header.header_size"),
    ("header_size past bmap", {"header_size": 0x10000}, "header.header_size"),
    ("image_type", {"image_type": 9}, "header.image_type"),
    ("sector_size", {"sector_size": 4096}, "header.sector_size"),
    ("block_size zero", {"block_size": 0}, "header.block_size"),
    ("block_size odd", {"block_size": 3 * MIB}, "header.block_size"),
    ("block_size huge", {"block_size": 1 << 31}, "header.block_size"),
    ("disk_size unaligned", {"disk_size": vdi_images.SIZE + 1}, "header.disk_size"),
    ("disk_size zero", {"disk_size": 0, "blocks_in_image": 0}, "header.disk_size"),
    ("disk_size huge", {"disk_size": 1 << 62}, "header.blocks_in_image"),
    ("blocks_in_image", {"blocks_in_image": 0xFFFFFFFF}, "header.blocks_in_image"),
    ("blocks_allocated", {"blocks_allocated": 9}, "header.blocks_allocated"),
    ("offset_bmap past end", {"offset_bmap": 0xFFFFFF00}, "header.offset_bmap"),
    ("offset_data inside bmap", {"offset_data": 0x200}, "header.offset_data"),
    ("offset_data past end", {"offset_data": 0x7FFFFFFF}, "header.offset_data"),
]


@pytest.mark.parametrize(("what", "fields", "field"), HEADER_DAMAGE,
                         ids=[c[0] for c in HEADER_DAMAGE])
def test_damaged_header_fields_are_named(work: Path, tmp_path: Path, what: str,
                                         fields: dict[str, int], field: str) -> None:
    path = _damaged(work, tmp_path)
    set_header(path, **fields)
    with pytest.raises(FormatError) as err:
        open_disk(path, format="vdi")
    assert err.value.field == field
    assert err.value.offset == OFFSETS[field.removeprefix("header.")]
    code, out, text = vhdkit("inspect", "--format", "vdi", str(path))
    assert code == 2 and out == "" and len(text.splitlines()) == 1
    assert f"{field} at offset {err.value.offset}" in text


def test_check_reports_a_damaged_vdi_as_a_format_finding(work: Path, tmp_path: Path) -> None:
    path = _damaged(work, tmp_path)
    set_header(path, block_size=3 * MIB)
    code, out, _ = vhdkit("check", "--json", str(path))
    report = json.loads(out)
    failed = [f for f in report["findings"] if not f["passed"] and f["severity"] != "info"]
    assert code == 1 and [f["id"] for f in failed] == ["format"]
    assert failed[0]["evidence"] == f"header.block_size @ {OFFSETS['block_size']}"


def test_a_block_past_the_end_of_the_file(work: Path, tmp_path: Path) -> None:
    path = _damaged(work, tmp_path)
    h = header(path)
    set_bmap(path, 5, 1000)
    with pytest.raises(FormatError) as err:
        open_disk(path)
    assert (err.value.field, err.value.offset) == ("bmap[5]", h.offset_bmap + 20)
    assert "past the end of the file" in err.value.problem


def test_two_entries_on_one_data_block(work: Path, tmp_path: Path) -> None:
    path = _damaged(work, tmp_path)
    entries = bmap(path)
    set_bmap(path, 7, entries[0])
    with pytest.raises(FormatError) as err:
        open_disk(path)
    assert err.value.field in ("bmap[0]", "bmap[7]")
    assert "already used by entry" in err.value.problem


def test_a_truncated_file(work: Path, tmp_path: Path) -> None:
    path = _damaged(work, tmp_path)
    os.truncate(path, path.stat().st_size - 4096)  # the last allocated block is cut short
    with pytest.raises(FormatError, match="past the end of the file"):
        open_disk(path)
    os.truncate(path, 300)
    with pytest.raises(FormatError, match="truncated"):
        open_disk(path)


@pytest.mark.parametrize(("kind", "name"), [(4, "differencing"), (3, "undo")])
def test_snapshot_layers_without_parent_are_refused_by_name(work: Path, tmp_path: Path,
                                                            kind: int, name: str) -> None:
    path = _damaged(work, tmp_path)
    set_header(path, image_type=kind)
    with pytest.raises(UnsupportedDisk, match=f"{name} VDI.*VBoxManage clonemedium"):
        open_disk(path)
    code, _, err = vhdkit("convert", str(path), str(tmp_path / "o.vhd"))
    assert code == 2 and len(err.splitlines()) == 1 and name in err


@pytest.fixture(scope="module")
def snapshot(work: Path) -> dict[str, Any]:
    child, parent, want = vdi_images.differencing(work)
    return {"child": child, "parent": parent, "want": want}


def test_a_differencing_vdi_reads_through_its_named_parent(snapshot: dict[str, Any],
                                                           tmp_path: Path) -> None:
    child, parent, want = snapshot["child"], snapshot["parent"], snapshot["want"]
    with open_disk(child, parent) as disk:
        assert disk.read_at(0, disk.size) == want
        ext = disk.extents()
        assert [d.path for d in disk.chain()] == [str(child), str(parent)]
        assert disk.facts()["subformat"] == "differencing"
    assert not subtract(nonzero_runs(want), ext)
    assert Extent(5 * MIB, MIB) not in ext and not any(e.start <= 5 * MIB + 4096 < e.end
                                                        for e in ext)
    code, out, err = vhdkit("inspect", "--json", "--parent", str(parent), str(child))
    assert code == 0, err
    doc = json.loads(out)
    assert [m["path"] for m in doc["chain"]] == [str(child), str(parent)]
    assert doc["details"]["parent_uuid"] == str(uuid.UUID(bytes_le=bytes(
        header(parent).uuid_image)))
    out_vhd = tmp_path / "flat.vhd"
    code, _, err = vhdkit("convert", "--parent", str(parent), str(child), str(out_vhd))
    assert code == 0, err
    assert qemu.to_raw(out_vhd, "vpc", tmp_path / "flat.raw").read_bytes()[: len(want)] == want


def test_check_fix_for_a_differencing_vdi_names_the_parent(snapshot: dict[str, Any]) -> None:
    child, parent = snapshot["child"], snapshot["parent"]
    code, out, _ = vhdkit("check", "--json", "--parent", str(parent), str(child))
    (finding,) = [f for f in json.loads(out)["findings"] if f["id"] == "format"]
    dst = child.with_name("snap-azure.vhd")
    assert code == 1 and finding["fix"] == f"vhdkit convert --parent {parent} {child} {dst}"
    code, _, err = vhdkit(*shlex.split(finding["fix"])[1:])
    assert code == 0, err
    assert qemu.to_raw(dst, "vpc", dst.with_suffix(".raw")).read_bytes()[
        : len(snapshot["want"])] == snapshot["want"]


def test_a_differencing_vdi_checks_its_parent(snapshot: dict[str, Any], work: Path,
                                              tmp_path: Path) -> None:
    child = snapshot["child"]
    with pytest.raises(ParentNotFound, match="the child links to"):
        open_disk(child, work / "static.vdi")  # another VDI: another UUID
    other = qemu.convert(work / "src.raw", "raw", tmp_path / "p.vhd", "vpc")
    with pytest.raises(ParentNotFound, match="is a vhd-dynamic"):
        open_disk(child, other)
    with pytest.raises(ParentNotFound, match="loops back"):
        open_disk(child, child)
    code, out, _ = vhdkit("check", "--parent", str(work / "static.vdi"), str(child))
    assert code == 1 and "vhd.parent" in out


def test_block_extra_is_refused(work: Path, tmp_path: Path) -> None:
    path = _damaged(work, tmp_path)
    set_header(path, block_extra=512)
    with pytest.raises(UnsupportedDisk, match=f"header.block_extra at offset "
                                              f"{OFFSETS['block_extra']}"):
        open_disk(path)


# --- mutations ------------------------------------------------------------------------------------

#: header fields the reader interprets, with the values most likely to break bounds
INT_FIELDS = [s.name for s in HEADER.subcons if s.name not in (
    "text", "description", "uuid_image", "uuid_last_snap", "uuid_link", "uuid_parent")]


def _values(rng: random.Random, file_size: int) -> int:
    return rng.choice([0, 1, 2, 511, 512, 513, 1024, MIB, MIB + 1, 1 << 31, 0xFFFFFFFE,
                       0xFFFFFFFF, file_size, file_size - 1, file_size + 1,
                       rng.randrange(1 << 32), 1 << rng.randrange(32)])


def _exercise(path: Path) -> bool:
    """Open and read a possibly damaged image; True if it was read, False if refused."""
    try:
        with open_disk(path) as disk:
            ext = disk.extents()
            disk.facts()
            disk.read_at(0, 65536)
            for e in ext[:4]:
                disk.read_at(e.start, min(e.length, 65536))
            disk.read_at(max(0, disk.size - 4096), 8192)
    except FormatError as exc:
        assert exc.field and exc.offset is not None, exc  # names the field and where it is
        return False
    except VhdkitError:
        return False
    return True


def test_mutations_raise_only_vhdkit_errors(tmp_path: Path) -> None:
    # a small dynamic VDI: 4 blocks, one allocated (file of 1 MiB + 1 KiB)
    raw = qemu.create(tmp_path / "m.raw", "raw", "4M")
    qemu.write(raw, "raw", [(2 * MIB + 4096, 4096, 0x5A)])
    base_path = qemu.convert(raw, "raw", tmp_path / "base.vdi", "vdi")
    base = base_path.read_bytes()
    h = header(base_path)
    path = tmp_path / "m.vdi"
    path.write_bytes(base)
    fd = os.open(path, os.O_RDWR)
    rng = random.Random(20261202)
    outcomes = {True: 0, False: 0}
    peak = 0
    try:
        for n in range(10_000):
            muts: list[tuple[int, bytes]] = []
            for _ in range(rng.randint(1, 3)):
                pick = rng.random()
                if pick < 0.5:  # a header field set to a boundary value
                    name = rng.choice(INT_FIELDS)
                    width = 8 if name == "disk_size" else 4
                    value = _values(rng, len(base)) & ((1 << (8 * width)) - 1)
                    muts.append((OFFSETS[name], value.to_bytes(width, "little")))
                elif pick < 0.8:  # a block map entry
                    i = rng.randrange(h.blocks_in_image)
                    value = rng.choice([BLOCK_FREE, BLOCK_ZERO, 0xFFFFFFFD, 0, 1, 2,
                                        rng.randrange(1 << 32)])
                    muts.append((h.offset_bmap + 4 * i, value.to_bytes(4, "little")))
                else:  # any byte of the header or map
                    muts.append((rng.randrange(h.offset_data), bytes([rng.randrange(256)])))
            cut = rng.randrange(len(base)) if rng.random() < 0.02 else None
            for off, data in muts:
                os.pwrite(fd, data, off)
            if cut is not None:
                os.ftruncate(fd, cut)
            traced = n % 20 == 0  # memory is traced on every 20th example (tracing is slow)
            if traced:
                tracemalloc.start()
            try:
                outcomes[_exercise(path)] += 1
                if traced:
                    peak = max(peak, tracemalloc.get_traced_memory()[1])
            finally:
                if traced:
                    tracemalloc.stop()
                if cut is not None:
                    os.pwrite(fd, base[cut:], cut)
                for off, data in reversed(muts):
                    os.pwrite(fd, base[off : off + len(data)], off)
    finally:
        os.close(fd)
    assert path.read_bytes() == base  # every example started from the real image
    # both outcomes were reached: the mutations hit what the reader checks and what it reads
    assert outcomes[True] > 1000 and outcomes[False] > 1000, outcomes
    # no allocation sized by an unchecked field: the peak stays near the file's own size
    assert 0 < peak < 8 * MIB, peak


def _rchar() -> int:
    """Bytes this process has read through read/pread so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_work_grows_with_the_data_not_the_virtual_size(tmp_path: Path) -> None:
    # 1 TiB virtual, one 1 MiB block of data: the block map is 4 MiB, the data 1 MiB
    path = qemu.create(tmp_path / "huge.vdi", "vdi", "1T")
    qemu.write(path, "vdi", [(512 * 1024**3, 65536, 0x42)])
    assert path.stat().st_size < 8 * MIB
    before = _rchar()
    for args in (["inspect", "--json", str(path)], ["check", "--json", str(path)],
                 ["upload", str(path), "--dry-run", "--json", "--skip-preflight", "-q"]):
        code, out, err = vhdkit(*args)
        assert code in (0, 1), (args, err)
    read = _rchar() - before
    assert read < 32 * MIB, read  # three commands, each O(map + data), not O(1 TiB)
    plan = json.loads(out)
    assert plan["bytes_sent"] == 65536 + 512  # the data and the footer


def test_mutated_differencing_vdis_raise_only_vhdkit_errors(snapshot: dict[str, Any]) -> None:
    # the child of a two-disk chain, damaged; its parent stays intact
    child, parent = snapshot["child"], snapshot["parent"]
    base = child.read_bytes()
    h = header(child)
    rng = random.Random(7)
    fd = os.open(child, os.O_RDWR)
    outcomes = {True: 0, False: 0}
    try:
        for _ in range(2000):
            if rng.random() < 0.5:
                name = rng.choice(INT_FIELDS)
                width = 8 if name == "disk_size" else 4
                value = _values(rng, len(base)) & ((1 << (8 * width)) - 1)
                off, data = OFFSETS[name], value.to_bytes(width, "little")
            else:
                i = rng.randrange(h.blocks_in_image)
                value = rng.choice([BLOCK_FREE, BLOCK_ZERO, 0, 1, 2, rng.randrange(1 << 32)])
                off, data = h.offset_bmap + 4 * i, value.to_bytes(4, "little")
            os.pwrite(fd, data, off)
            try:
                try:
                    with open_disk(child, parent) as disk:
                        for e in disk.extents()[:4]:
                            disk.read_at(e.start, min(e.length, 65536))
                        disk.read_at(max(0, disk.size - 4096), 8192)
                    outcomes[True] += 1
                except VhdkitError:
                    outcomes[False] += 1
            finally:
                os.pwrite(fd, base[off : off + len(data)], off)
    finally:
        os.close(fd)
    assert child.read_bytes() == base
    assert outcomes[True] > 200 and outcomes[False] > 200, outcomes
